"""Shared fixtures: tiny CelebA-like folders in the Kaggle, original and plain layouts."""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from data import CELEBA_ATTRIBUTES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CELEBA_SAMPLE = REPO.parent / "shared" / "celeba-sample"
SMILING = CELEBA_ATTRIBUTES.index("Smiling")


def face_image(rng: np.random.Generator, size: tuple[int, int] = (178, 218)) -> Image.Image:
    """A smooth synthetic 'face': a coloured ellipse with two eyes on a coloured background."""
    width, height = size
    background = tuple(int(v) for v in rng.integers(0, 255, 3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    skin = tuple(int(v) for v in rng.integers(90, 255, 3))
    cx, cy = width / 2 + rng.normal(0, 6), height / 2 + rng.normal(0, 6)
    rx, ry = width * rng.uniform(0.25, 0.35), height * rng.uniform(0.25, 0.33)
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=skin)
    for side in (-1, 1):
        ex = cx + side * rx * 0.4
        draw.ellipse((ex - 6, cy - ry * 0.2 - 5, ex + 6, cy - ry * 0.2 + 5), fill=(20, 20, 20))
    return image


def write_faces(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / name
        face_image(rng).save(path, quality=90) if path.suffix == ".jpg" else face_image(rng).save(path)
        paths.append(path)
    return paths


def png_chunk(kind: bytes, content: bytes) -> bytes:
    """A PNG chunk: length, type, content and its checksum."""
    return len(content).to_bytes(4, "big") + kind + content + zlib.crc32(kind + content).to_bytes(4, "big")


def bomb_png(path: Path, side: int = 10_000) -> Path:
    """A valid 1-bit PNG of side x side pixels (100 megapixels by default) in a few kilobytes."""
    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1-bit grey
    pixels = zlib.compress(bytes(side * (1 + (side + 7) // 8)), 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")
    )
    return path


def partition_of(index: int) -> int:
    """Official-style split by file number: 0 train, 1 validation, 2 test."""
    return 0 if index % 10 < 7 else (1 if index % 10 < 9 else 2)


def attribute_row(index: int) -> list[int]:
    values = [-1] * len(CELEBA_ATTRIBUTES)
    values[SMILING] = 1 if index % 2 else -1
    return values


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


def tiny_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """train.py flags for a model small enough to train in seconds on a CPU.

    No learning-rate warm-up: these runs are a few steps long, shorter than the default warm-up.
    float32 on every CPU, so results do not depend on whether the CPU has bf16 (auto would pick it).
    """
    return [
        "--data", str(data), "--out", str(out), "--image-size", "16", "--filters", "8,16",
        "--hidden", "32", "--latent", "8", "--batch-size", "8", "--lr-warmup", "0", "--verbose", "0",
        "--mixed-precision", "off", *extra,
    ]  # fmt: skip
