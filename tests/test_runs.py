"""runs.py and what every script shares: file modes of atomic writes, and ONNX
pairs of one export."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

import export_onnx
import images
import runs

PRETRAINED = REPO / "pretrained" / "celeba64"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_usual_file_mode(tmp_path, umask):
    """Not mkstemp's 0600: 0666 less the umask, like any new file, so others can read models and pictures."""
    import train  # its loss-curve PNG goes through the same helper

    previous = os.umask(umask)
    try:
        runs.write_text_atomic(tmp_path / "config.json", "{}\n")
        images.save_png(Image.new("RGB", (4, 4)), tmp_path / "grid" / "grid.png")
        train.plot_history([{"epoch": 1, "loss": 1.0}], tmp_path / "loss_curves.png")
        export_onnx.copy_atomic(tmp_path / "config.json", tmp_path / "copied.json")
        with pytest.raises(OSError), images.atomic_write(tmp_path / "failed.txt") as temporary:
            temporary.write_text("half")
            raise OSError("disk full")
    finally:
        os.umask(previous)
    written = ["config.json", "grid/grid.png", "loss_curves.png", "copied.json"]
    assert {name: (tmp_path / name).stat().st_mode & 0o777 for name in written} == dict.fromkeys(
        written, 0o666 & ~umask
    )
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(Path(n).name for n in written)


def test_onnx_pair_of_different_exports_is_refused(tmp_path):
    """An encoder of one export beside a decoder of another: refused when the encoder is needed."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "decoder.onnx").symlink_to(PRETRAINED / "decoder.onnx")
    (mixed / "encoder.onnx").symlink_to(PRETRAINED / "encoder.onnx")
    backend = runs.open_backend(mixed)
    assert backend.encode(np.zeros((1, 64, 64, 3))) is not None  # both from one (older) export, without an id
    decoder = {"export_id": "a" * 16, "source_run": "run_a", "latent_dim": "8"}
    assert export_onnx.pair_mismatch(decoder, dict(decoder)) == ""
    assert export_onnx.pair_mismatch(decoder, {**decoder, "export_id": "b" * 16}) == (
        f"export_id {'a' * 16!r} vs {'b' * 16!r}"
    )
    assert "source_run 'run_a' vs None" in export_onnx.pair_mismatch(decoder, {"latent_dim": "8"})
