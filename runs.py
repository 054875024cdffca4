"""The run folder: config.json's format tag and reader, the model loader, atomic text writes,
and the --help formatter the scripts share.

train.py writes config.json; generate.py, export_onnx.py and evaluate.py rebuild a model from
it. Kept free of TensorFlow (json only) so the ONNX inference path can read run folders too.
Not meant to be run by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import textwrap
from pathlib import Path

RUN_FORMAT = "celeba-vae-run/1"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none (None / off) or the help text already gives
    one. In descriptions and epilogs, paragraphs are wrapped and indented lines (examples) are
    kept as written."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        return "\n".join(
            line
            if line[:1].isspace() or not line
            else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
            for line in text.splitlines()
        )


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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically: a temporary file in the same folder renamed into place,
    so a killed process never leaves a half-written config, history or cache file."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temporary, path)


def load_model(run_dir: str | os.PathLike, part: str, config: dict):
    """encoder.keras or decoder.keras of a run (part "encoder" or "decoder"), loaded with
    safe_mode on and checked against config.json's sizes. Imports Keras only when called."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TensorFlow's C++ start-up chatter
    import keras

    path = Path(run_dir) / f"{part}.keras"
    if not path.is_file():
        raise RunFolderError(
            f"{run_dir} has no {path.name}; train.py writes it after each epoch, so let the run finish its first epoch"
        )
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many types for damaged or foreign archives
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise RunFolderError(f"cannot load {path} ({reason}); re-run train.py for this run") from None
    size, channels, latent = int(config["image_size"]), int(config["channels"]), int(config["latent_dim"])
    image, code = (size, size, channels), (latent,)
    expected = (image, [code, code]) if part == "encoder" else (code, [image])
    found = (tuple(model.inputs[0].shape[1:]), [tuple(output.shape[1:]) for output in model.outputs])
    if found != expected:
        raise RunFolderError(
            f"{path} takes {found[0]} and gives {found[1]}, but config.json describes {expected[0]} -> {expected[1]}: "
            "the model files and config.json come from different runs"
        )
    return model
