"""Helpers the tests share: paths, synthetic faces and files, the tiny model's train.py flags."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data import CELEBA_ATTRIBUTES

REPO = Path(__file__).resolve().parents[1]
CELEBA_SAMPLE = REPO.parent / "shared" / "celeba-sample"
SMILING = CELEBA_ATTRIBUTES.index("Smiling")
MALE = CELEBA_ATTRIBUTES.index("Male")


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
    values[MALE] = 1 if index % 3 == 0 else -1
    return values


def tiny_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """train.py flags for a model small enough to train in seconds on a CPU.

    No learning-rate warm-up: these runs are a few steps long, shorter than the default warm-up.
    float32 on every CPU, so results do not depend on whether the CPU has bf16 (auto would pick it).
    """
    return [
        "--data", str(data), "--out", str(out), "--image-size", "16", "--filters", "8,16",
        "--hidden", "32", "--latent", "8", "--batch-size", "8", "--lr-warmup", "0", "--verbose", "0",
        "--mixed-precision", "off", "--epochs", "20", "--output-filters", "0", "--adversarial", "0",
        *extra,  # the default epochs and a discriminator phase: far more than tests need
    ]  # fmt: skip
