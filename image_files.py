"""Which image files training can read, and why the others cannot, from their bytes (check_image).

TensorFlow's decoders read a JPEG or PNG as images.read_pixels does only without EXIF or XMP metadata, which can
rotate a photo (Pillow applies it, TensorFlow does not). Decompression bombs are refused by their size. Why a
checker of its own: docs/training.md, "Damaged image files"."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from typing import IO

from PIL import Image

from errors import first_line, not_a_script

# Every format training and images.load_face read, as Pillow names it -> its file name suffixes.
IMAGE_FORMATS = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "GIF": (".gif",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
}
IMAGE_SUFFIXES = tuple(suffix for suffixes in IMAGE_FORMATS.values() for suffix in suffixes)
FORMATS_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# Image files of other formats, named as skipped in a data folder rather than dropped unseen.
OTHER_IMAGE_SUFFIXES = (".heic", ".heif", ".avif", ".jxl", ".jp2", ".ppm", ".pgm", ".pbm", ".tga", ".ico", ".psd")
CONVERT_HINT = "convert them to PNG (with ImageMagick: mogrify -format png FILE...)"
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit, applied everywhere
# JPEG markers libjpeg accepts before the first scan (SOS): frame headers (SOF0-15 less DHT,
# JPG and DAC), tables, restart interval, comments, application data.
JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
JPEG_TABLES = {0xC4, 0xCC, *range(0xDB, 0xFF)}
JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> (samples per pixel, the bit depths allowed with it)
PNG_COLOUR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)), 6: (4, (8, 16))}
# Adam7 interlacing: (first column, first row, column step, row step) of each of its 7 passes
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
PNG_LAST_FILTER = 4  # row filter types: 0 none, 1 sub, 2 up, 3 average, 4 Paeth
PNG_INFLATE_CHUNK = 1 << 16  # bytes inflated at a time when checking a PNG's image data
# Text chunks whose keyword makes Pillow read an orientation from them (EXIF as hex, XMP).
PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")
PNG_METADATA_KEYS = (b"Raw profile type exif\0", b"XML:com.adobe.xmp\0")


def check_image(path: str | os.PathLike) -> tuple[str | None, bool]:
    """(what is wrong with an image file or None, whether TensorFlow decodes it as Pillow does). A JPEG passes with
    intact header segments and an end-of-image marker (libjpeg decodes damaged compressed data, with a warning), a
    PNG with intact chunks and image data (as libpng reads them), another format if Pillow decodes it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if head[:3] == b"\xff\xd8\xff":
                handle.seek(0)
                problem, size, rotatable = jpeg_structure(handle)
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - 64))
                if problem is None and b"\xff\xd9" not in handle.read():
                    problem = "truncated: no end-of-image marker"
            elif head == PNG_SIGNATURE:
                problem, size, rotatable = png_structure(head + handle.read())
            else:
                return pillow_problem(path), False
    except OSError as error:
        return f"unreadable: {error.strerror}", False
    if problem is None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        return f"{size[1]}x{size[0]} pixels, above the {MAX_IMAGE_PIXELS:,}-pixel limit", False
    return problem, not rotatable


def pillow_problem(path: str | os.PathLike) -> str | None:
    """Why Pillow cannot decode a file of another format than JPEG and PNG, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow only warns below twice its limit
            with Image.open(path, formats=list(IMAGE_FORMATS)) as image:
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"above the {MAX_IMAGE_PIXELS:,}-pixel limit"
    except Exception as error:  # noqa: BLE001 (Pillow's plugins raise many kinds for a damaged file)
        return f"not a {FORMATS_TEXT} file Pillow can decode ({first_line(error, 80)})"
    return None


def jpeg_structure(handle: IO[bytes]) -> tuple[str | None, tuple[int, int], bool]:
    """(problem or None, (height, width), whether an APP1 segment holds EXIF or XMP) from the header segments."""
    content = handle.read(1 << 16)
    complete = len(content) < 1 << 16
    position, size, metadata = 2, None, False
    while True:
        if position + 10 > len(content) and not complete:  # a header longer than the first read
            content, complete = content + handle.read(), True
        # As libjpeg: skip stray bytes up to a 0xFF, fill bytes 0xFF, and stuffed 0xFF 0x00 pairs.
        while position + 1 < len(content) and (content[position] != 0xFF or content[position + 1] in (0x00, 0xFF)):
            position += 1
        if position + 4 > len(content):
            return "truncated in its header", (0, 0), False
        marker = content[position + 1]
        if marker in JPEG_STANDALONE:
            position += 2
            continue
        length = int.from_bytes(content[position + 2 : position + 4], "big")
        if marker == 0xDA:  # start of scan: the header is complete
            return (None, size, metadata) if size else ("no frame header before the image data", (0, 0), False)
        if marker in JPEG_FRAMES:
            if size is not None or position + 10 > len(content):
                return "damaged frame header", (0, 0), False
            height, width, components = struct.unpack_from(">2HB", content, position + 5)
            if not (height and width and components and length == 8 + 3 * components):
                return f"damaged frame header ({width}x{height}, {components} components)", (0, 0), False
            size = (height, width)
        elif marker not in JPEG_TABLES or length < 2:
            return f"damaged header (marker 0x{marker:02x} at byte {position})", (0, 0), False
        metadata |= marker == 0xE1
        position += 2 + length


def png_structure(content: bytes) -> tuple[str | None, tuple[int, int], bool]:
    """(problem or None, (height, width), whether it holds EXIF or XMP) from a whole PNG file's chunks and data."""
    position, size, header, image_data, metadata = 8, None, b"", [], False
    while position + 12 <= len(content):
        length, kind = struct.unpack_from(">I4s", content, position)
        if size is None and (kind != b"IHDR" or length != 13):
            return "damaged: no IHDR chunk first", (0, 0), False
        end = position + 12 + length
        if end > len(content):
            return f"damaged or truncated: a chunk at byte {position} runs past the end of the file", (0, 0), False
        if kind[:1].isupper() and zlib.crc32(content[position + 4 : end - 4]) != int.from_bytes(content[end - 4 : end]):
            # libpng refuses a checksum error in a critical chunk (upper-case first letter).
            return f"damaged: checksum error in its {kind.decode('latin-1')} chunk", (0, 0), False
        if size is None:
            header = content[position + 8 : end - 4]
            width, height = struct.unpack_from(">2I", header)
            if not (width and height):
                return f"empty image ({width}x{height})", (0, 0), False
            size = (height, width)
        elif kind == b"IDAT":
            image_data.append(content[position + 8 : end - 4])
        elif kind == b"eXIf" or kind in PNG_TEXT and content[position + 8 : end - 4].startswith(PNG_METADATA_KEYS):
            metadata = True
        if kind == b"IEND":  # png_data_problem finds a PNG without IDAT chunks short of data
            if size[0] * size[1] > MAX_IMAGE_PIXELS:
                return None, size, metadata  # a bomb: check_image refuses its size, uninflated
            return png_data_problem(header, b"".join(image_data)), size, metadata
        position = end
    return "truncated: no IEND chunk", (0, 0), False


def png_data_problem(header: bytes, compressed: bytes) -> str | None:
    """What libpng would find wrong with a PNG's image data (IHDR fields, the IDAT chunks joined), or None: a
    broken or short zlib stream, or (not interlaced) a row with an invalid filter type. Inflated in pieces, and
    only as far as the rows need, so that a small file cannot make the check take much memory or time."""
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">2I5B", header)
    samples, depths = PNG_COLOUR_TYPES.get(colour, (0, ()))
    if depth not in depths or compression or filtering or interlace > 1:
        return (
            f"damaged: its IHDR chunk is invalid (bit depth {depth}, colour type {colour}, compression {compression}, "
            f"filter {filtering}, interlace {interlace})"
        )
    steps = ADAM7_PASSES if interlace else ((0, 0, 1, 1),)  # not interlaced: one pass over every pixel
    passes = [(-(-(width - x) // dx), -(-(height - y) // dy)) for x, y, dx, dy in steps]
    # A row is its filter type byte, then its packed samples; a pass without columns has no rows.
    needed = sum(rows * (1 + (columns * samples * depth + 7) // 8) for columns, rows in passes if columns)
    row_size = 0 if interlace else needed // height  # rows of one size: their filter bytes are checked
    inflater, pending, produced = zlib.decompressobj(), compressed, 0
    try:
        while not inflater.eof and produced <= needed:
            piece = inflater.decompress(pending, PNG_INFLATE_CHUNK)
            pending = inflater.unconsumed_tail
            if row_size:  # the filter type bytes that start the rows in this piece, and the rows' numbers
                filters = piece[-produced % row_size : needed - produced : row_size]
                for row, value in enumerate(filters, -(-produced // row_size) + 1):
                    if value > PNG_LAST_FILTER:
                        return f"damaged: its compressed image data has an invalid filter type {value} in row {row}"
            produced += len(piece)
            if not piece and not pending:
                break  # every byte inflated and the stream has not ended
    except zlib.error as error:
        return f"damaged: its compressed image data is broken ({error})"
    if produced < needed:
        return f"damaged: its compressed image data holds {produced} of the {needed} bytes its {width}x{height} pixels need"
    if not inflater.eof and produced == needed:
        return "damaged: its compressed image data is cut short (no end of stream)"
    return None


if __name__ == "__main__":
    not_a_script(__file__)
