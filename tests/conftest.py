"""Fixtures: tiny CelebA-like folders in the Kaggle, original and plain layouts, and one tiny
trained run (with its ONNX export) that every test needing a run folder shares. Tests that use
the trained run or the browser, and the modules that train (pytestmark), are marked `slow`:
`pytest -m "not slow"` is the quick unit loop."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
from helpers import CELEBA_ATTRIBUTES, attribute_row, partition_of, tiny_train_args, write_faces  # noqa: E402

# A trained model or a browser: seconds to make, and what end-to-end tests use.
SLOW_FIXTURES = {"tiny_run", "driver"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def kaggle_celeba(tmp_path_factory) -> Path:
    """40 images in the Kaggle layout; attributes for the first 30 only (partial, like the sample);
    one truncated and one non-image .jpg among them."""
    root = tmp_path_factory.mktemp("kaggle")
    names = [f"{i:06d}.jpg" for i in range(1, 41)]
    paths = write_faces(root / "img_align_celeba" / "img_align_celeba", names)
    paths[5].write_bytes(paths[5].read_bytes()[:500])  # truncated download
    paths[11].write_bytes(b"this is not a jpeg")
    (root / "list_eval_partition.csv").write_text(
        "image_id,partition\n" + "".join(f"{n},{partition_of(i)}\n" for i, n in enumerate(names))
    )
    rows = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
    rows += [f"{n}," + ",".join(map(str, attribute_row(i))) for i, n in enumerate(names[:30])]
    (root / "list_attr_celeba.csv").write_text("\n".join(rows) + "\n")
    (root / "identity_CelebA.txt").write_text("".join(f"{n} {i // 4}\n" for i, n in enumerate(names)))
    return root


@pytest.fixture(scope="session")
def original_celeba(tmp_path_factory) -> Path:
    """20 images in the original layout (Img/, Anno/ with count and header lines, Eval/)."""
    root = tmp_path_factory.mktemp("original")
    names = [f"{i:06d}.jpg" for i in range(1, 21)]
    write_faces(root / "Img" / "img_align_celeba", names, seed=1)
    (root / "Eval").mkdir()
    (root / "Eval" / "list_eval_partition.txt").write_text(
        "".join(f"{n} {partition_of(i)}\n" for i, n in enumerate(names))
    )
    (root / "Anno").mkdir()
    lines = [str(len(names)), " ".join(CELEBA_ATTRIBUTES)]
    lines += [f"{n} " + " ".join(f"{v:2d}" for v in attribute_row(i)) for i, n in enumerate(names)]
    (root / "Anno" / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def face_folder(tmp_path_factory) -> Path:
    """A plain folder of 60 faces, PNG and JPEG mixed, one in a subfolder."""
    root = tmp_path_factory.mktemp("faces")
    write_faces(root, [f"face{i:03d}.png" for i in range(30)], seed=2)
    write_faces(root, [f"photo{i:03d}.jpg" for i in range(29)], seed=3)
    write_faces(root / "more", ["extra.jpg"], seed=4)
    return root


@pytest.fixture(scope="session")
def tiny_run(kaggle_celeba, tmp_path_factory) -> Path:
    """A two-epoch tiny run (beta 1, so val_loss is the negative ELBO) with its ONNX export beside
    the Keras files. Shared by the tests that need a trained run: they may add outputs of their own
    (evaluate.py's eval_*.json), and copy it before changing anything it holds."""
    import export_onnx
    import train

    run = tmp_path_factory.mktemp("tiny") / "run"
    train.train_command(tiny_train_args(kaggle_celeba, run, "--epochs", "2", "--lr", "3e-3", "--beta", "1"))
    export_onnx.main(["--run", str(run)])
    return run
