"""runs.py and what every script shares: file modes of atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

import export_onnx
import images
import runs


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
