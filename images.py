"""Image helpers with only numpy and Pillow (no TensorFlow, for the ONNX path): load a face as training
does, save image grids, and the atomic file write every script uses. A library module."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from errors import UserError, not_a_script
from image_files import FORMATS_TEXT, IMAGE_FORMATS, MAX_IMAGE_PIXELS

CELEBA_WIDTH = 178  # width of an aligned CelebA image; crop sizes are given in its pixels
DEFAULT_CROP = 148  # the central face box common in 64x64 CelebA work
GRID_PADDING = 2
LABEL_SIZE = 12  # pixels: Pillow's own font (Aileron) spaces its letters unevenly at its default 10
LABEL_HEIGHT = LABEL_SIZE + 4  # a line of labels and its margin
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # output images, by extension
# High-quality JPEG without colour subsampling (faces are small, their edges matter); lossless WebP.
SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"lossless": True}}


def crop_box(height: int, width: int, crop: int = DEFAULT_CROP) -> tuple[int, int, int, int]:
    """(top, left, side, side) of the central square crop, as data.crop_window computes it: crop is
    in pixels of the 178-wide CelebA frame, scaled to other sizes' shorter side; 0 keeps it all."""
    short_side = min(height, width)
    side = short_side if crop <= 0 else min(short_side, max(1, round(crop * short_side / CELEBA_WIDTH)))
    return (height - side) // 2, (width - side) // 2, side, side


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """An image file -> uint8 [H, W, 3] RGB, decoded as data.decode_face does: EXIF-upright,
    16-bit samples keep their high byte, grey made RGB, alpha dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow only warns below twice its limit
            with Image.open(path, formats=list(IMAGE_FORMATS)) as image:
                upright = ImageOps.exif_transpose(image)  # a photo as taken, as a viewer shows it
                if upright.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit grey
                    grey = (np.clip(np.asarray(upright, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
                    return np.repeat(grey[..., None], 3, axis=-1)
                return np.asarray(upright.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(
            f"{path} has more than {MAX_IMAGE_PIXELS:,} pixels, too many to decode safely (a decompression bomb?); "
            "give a smaller image"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"cannot read {path} as an image ({error}); give a {FORMATS_TEXT} file (convert others to PNG, e.g. "
            "with ImageMagick: mogrify -format png FILE)"
        ) from None


def area_weights(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of tf.image.resize(method="area") along one axis."""
    edges = np.arange(size_out + 1) * (size_in / size_out)
    starts = np.arange(size_in)
    overlap = np.minimum(edges[1:, None], starts[None] + 1) - np.maximum(edges[:-1, None], starts[None])
    return np.clip(overlap, 0.0, None) * (size_out / size_in)


def load_face(path: str | os.PathLike, image_size: int, channels: int = 3, crop: int = DEFAULT_CROP) -> np.ndarray:
    """An image file -> float32 [image_size, image_size, channels] in [0, 1], as data.py prepares it."""
    return face_from_pixels(read_pixels(path), image_size, channels, crop)


def face_from_pixels(pixels: np.ndarray, image_size: int, channels: int = 3, crop: int = DEFAULT_CROP) -> np.ndarray:
    """uint8 [H, W, 3] pixels -> the model's float32 [image_size, image_size, channels] face (load_face)."""
    top, left, side, _ = crop_box(pixels.shape[0], pixels.shape[1], crop)
    square = pixels[top : top + side, left : left + side].astype(np.float64)
    weights = area_weights(side, image_size)
    resized = np.einsum("ij,jkc,lk->ilc", weights, square, weights, optimize=True)
    if channels == 1:  # tf.image.rgb_to_grayscale's weights
        resized = resized @ np.array([0.2989, 0.5870, 0.1140])[:, None]
    return (np.clip(np.round(resized), 0, 255) / 255.0).astype(np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_image(image: np.ndarray) -> Image.Image:
    """A Pillow image of an image [H, W, C] (C = 1 or 3) in [0, 1]."""
    pixels = to_uint8(image)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def make_grid(
    rows: Sequence[np.ndarray] | np.ndarray,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    scale: int = 1,
    title: str = "",
) -> Image.Image:
    """A grid of rows[r][c], images [H, W, C] (C = 1 or 3) in [0, 1], with optional row and column labels and title."""
    rows = [np.asarray(row) for row in rows]
    height, width = rows[0].shape[1:3]
    columns = max(len(row) for row in rows)
    font = ImageFont.load_default(LABEL_SIZE)
    label_width = max(int(font.getlength(str(label))) for label in row_labels) + 6 if row_labels else 0
    title_height = LABEL_HEIGHT if title else 0
    top = title_height + (LABEL_HEIGHT if column_labels else 0)
    cell_h, cell_w = height * scale + GRID_PADDING, width * scale + GRID_PADDING
    grid_width = max(label_width + columns * cell_w + GRID_PADDING, int(font.getlength(title)) + 6)
    grid = Image.new("RGB", (grid_width, top + len(rows) * cell_h + GRID_PADDING), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        y = top + GRID_PADDING + r * cell_h
        for c, image in enumerate(row):
            tile = to_image(image).convert("RGB").resize((width * scale, height * scale), Image.Resampling.NEAREST)
            grid.paste(tile, (label_width + GRID_PADDING + c * cell_w, y))
        if row_labels:
            draw.text((2, y + (cell_h - LABEL_SIZE) // 2), str(row_labels[r]), fill="black", font=font)
    for c, label in enumerate(column_labels or []):
        draw.text((label_width + GRID_PADDING + c * cell_w + 1, title_height + 1), str(label), fill="black", font=font)
    draw.text((GRID_PADDING, 1), title, fill="black", font=font)  # draws nothing without a title
    return grid


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path`, renamed over it when the block succeeds and removed when it fails, so a
    killed process never leaves a half-written file. Mode 0666 less the umask (not mkstemp's 0600)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def image_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserError(
            f"--out {path}: images are written as {', '.join(OUTPUT_FORMATS)}, not "
            f"{suffix or 'a name without an extension'}; give another --out"
        )
    return OUTPUT_FORMATS[suffix]


@contextlib.contextmanager
def made_folders(folder: Path) -> Iterator[None]:
    """Create `folder` and its missing parents; if the block fails, remove those made (if empty)."""
    made = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in made:
            with contextlib.suppress(OSError):  # not empty: something else was written there meanwhile
                path.rmdir()
        raise


def write_together(files: Mapping[Path, Callable[[Path], object]]) -> list[Path]:
    """Write {target: function writing a path} all or nothing: each to a temporary file, renamed into place
    once all are written, so a failure leaves no target changed and no folder made."""
    with contextlib.ExitStack() as stack:
        for folder in dict.fromkeys(Path(path).parent for path in files):
            stack.enter_context(made_folders(folder))
        for path, write in files.items():
            write(stack.enter_context(atomic_write(path)))
    return list(files)


def save_images(images: Mapping[Path, Image.Image]) -> None:
    """Write images {path: image} together, each in its extension's format (checked for all first)."""
    writers = {}
    for path, image in images.items():
        kind = image_format(path)
        writers[Path(path)] = functools.partial(image.save, format=kind, **SAVE_OPTIONS.get(kind, {}))
    write_together(writers)


def save_image(image: Image.Image, path: str | os.PathLike) -> None:
    """Write one image atomically in its extension's format, creating its folder."""
    save_images({Path(path): image})


if __name__ == "__main__":
    not_a_script(__file__)
