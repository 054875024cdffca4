"""Image helpers with only numpy and Pillow: load a face like training does, save PNG grids.

Kept free of TensorFlow so the ONNX inference path (generate.py --backend onnx) can use
it in apps that have no TensorFlow. Imported by train.py, generate.py and export_onnx.py;
not meant to be run by itself.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELEBA_WIDTH = 178  # width of an aligned CelebA image; crop sizes are given in its pixels
DEFAULT_CROP = 148  # the central face box common in 64x64 CelebA work
GRID_PADDING = 2
LABEL_HEIGHT = 14


def crop_box(height: int, width: int, crop: int = DEFAULT_CROP) -> tuple[int, int, int, int]:
    """(top, left, side, side) of the central square crop, as data.crop_window computes it.

    crop is the side in pixels of the 178-pixel-wide aligned CelebA frame; other sizes keep
    the same fraction of their shorter side. crop 0 keeps the whole central square.
    """
    short_side = min(height, width)
    side = short_side if crop <= 0 else min(short_side, max(1, round(crop * short_side / CELEBA_WIDTH)))
    return (height - side) // 2, (width - side) // 2, side, side


def load_face(path: str | os.PathLike, image_size: int, channels: int = 3, crop: int = DEFAULT_CROP) -> np.ndarray:
    """An image file -> float32 [image_size, image_size, channels] in [0, 1], cropped and
    resized the way data.py prepares training images."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except OSError as error:
        raise ValueError(f"cannot read {path} as an image ({error}); give a JPEG or PNG file") from None
    top, left, side, _ = crop_box(image.height, image.width, crop)
    image = image.crop((left, top, left + side, top + side)).resize(
        (image_size, image_size), Image.Resampling.BOX, reducing_gap=None
    )
    if channels == 1:
        image = image.convert("L")
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[..., None] if channels == 1 else array


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_grid(
    rows: Sequence[np.ndarray] | np.ndarray,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    scale: int = 1,
) -> Image.Image:
    """A PNG-ready grid: rows[r][c] is an image [H, W, C] (C = 1 or 3) in [0, 1].

    Optional text labels are drawn left of each row and above each column.
    """
    rows = [np.asarray(row) for row in rows]
    height, width, channels = rows[0].shape[1:]
    columns = max(len(row) for row in rows)
    font = ImageFont.load_default()
    label_width = 0
    if row_labels:
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_width = max(int(measure.textlength(str(label), font=font)) for label in row_labels) + 6
    top = LABEL_HEIGHT if column_labels else 0
    cell_h, cell_w = height * scale + GRID_PADDING, width * scale + GRID_PADDING
    grid = Image.new(
        "RGB", (label_width + columns * cell_w + GRID_PADDING, top + len(rows) * cell_h + GRID_PADDING), "white"
    )
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            pixels = to_uint8(image)
            tile = Image.fromarray(pixels[..., 0] if channels == 1 else pixels).convert("RGB")
            if scale != 1:
                tile = tile.resize((width * scale, height * scale), Image.Resampling.NEAREST)
            grid.paste(tile, (label_width + GRID_PADDING + c * cell_w, top + GRID_PADDING + r * cell_h))
        if row_labels:
            draw.text(
                (2, top + GRID_PADDING + r * cell_h + cell_h // 2 - 6), str(row_labels[r]), fill="black", font=font
            )
    for c, label in enumerate(column_labels or []):
        draw.text((label_width + GRID_PADDING + c * cell_w + 1, 1), str(label), fill="black", font=font)
    return grid


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    os.close(handle)
    try:
        image.save(temporary, format="PNG")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
