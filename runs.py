"""The run folder's config.json: its format tag and the one function that reads it.

train.py writes config.json; generate.py, export_onnx.py and evaluate.py rebuild a model from
it. Kept free of TensorFlow (json only) so the ONNX inference path can read run folders too.
Not meant to be run by itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RUN_FORMAT = "celeba-vae-run/1"


class RunFolderError(ValueError):
    """A run folder that cannot be used, reported as one line that says what to do."""


def read_config(run_dir: str | os.PathLike) -> dict:
    """config.json of a train.py run, checked for its format; `run_dir` is added to it."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunFolderError(f"{run_dir} has no config.json; give a run folder written by train.py")
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}); give a run folder written by train.py") from None
    if not isinstance(config, dict) or config.get("format") != RUN_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise RunFolderError(
            f"{path} is not a {RUN_FORMAT} config (format {found!r}); give a run folder written by train.py"
        )
    config["run_dir"] = str(run_dir)
    return config
