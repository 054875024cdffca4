"""data.py: layout detection, partitions, attributes, corrupt files and the decode pipeline."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import CELEBA_SAMPLE, REPO, SMILING, bomb_png, face_image, png_chunk, write_faces
from PIL import Image

import data
import image_files
import images
import runs
from data import CELEBA_ATTRIBUTES


def test_kaggle_layout(kaggle_celeba):
    dataset = data.find_dataset(kaggle_celeba)
    assert dataset.layout == "kaggle"
    assert len(dataset.files) == 40
    assert [len(dataset.split(s)) for s in ("train", "validation", "test")] == [28, 8, 4]
    assert len(dataset.attributes) == 30  # partial attribute file, like the real sample
    assert dataset.attributes["000002.jpg"][SMILING] == 1 and dataset.attributes["000001.jpg"][SMILING] == -1
    assert dataset.identities["000005.jpg"] == 1
    assert "kaggle layout" in dataset.describe()


def test_original_layout(original_celeba):
    dataset = data.find_dataset(original_celeba)
    assert dataset.layout == "original"
    assert len(dataset.files) == 20 and len(dataset.attributes) == 20
    assert [len(dataset.split(s)) for s in ("train", "validation", "test")] == [14, 4, 2]
    assert dataset.attributes["000004.jpg"][SMILING] == 1


def test_plain_folder_uses_a_stable_hash_split(face_folder):
    dataset = data.find_dataset(face_folder)
    assert dataset.layout == "folder" and len(dataset.files) == 60
    assert dataset.partition is None and not dataset.attributes
    splits = [dataset.split(s) for s in ("train", "validation", "test")]
    assert sum(map(len, splits)) == 60
    assert not set(splits[0]) & set(splits[1]) and not set(splits[0]) & set(splits[2])
    assert data.hash_split("face001.png") == data.hash_split("face001.png")
    assert 35 <= len(splits[0]) <= 55  # about 80%


def test_missing_or_empty_folder_errors_explain_layouts(tmp_path):
    with pytest.raises(data.DataError, match="does not exist.*Kaggle layout.*kaggle datasets download"):
        data.find_dataset(tmp_path / "nowhere")
    with pytest.raises(data.DataError, match="no image files found"):
        data.find_dataset(tmp_path)


def test_unknown_attribute_lists_valid_names():
    assert data.attribute_index("smiling") == SMILING
    with pytest.raises(data.DataError, match="unknown attribute 'Smile'.*Smiling.*Young"):
        data.attribute_index("Smile")


def test_bad_attribute_header_is_reported(tmp_path):
    path = tmp_path / "list_attr_celeba.csv"
    path.write_text("image_id,Smiling\n000001.jpg,1\n")
    with pytest.raises(data.DataError, match="40 CelebA attributes"):
        data.read_attributes(path)


def test_corrupt_files_are_skipped_and_counted(kaggle_celeba, caplog):
    files = data.find_dataset(kaggle_celeba).files
    with caplog.at_level(logging.WARNING, logger="data"):
        good = data.usable_files(files)
    assert len(good) == 38
    assert "skipped 2 of 40 image files that cannot be decoded" in caplog.text
    assert (
        "000006.jpg (truncated" in caplog.text
        and "000012.jpg (not a JPEG, PNG, WebP, GIF, BMP or TIFF file" in caplog.text
    )
    batches = list(data.make_dataset(files, image_size=16, batch_size=16))
    assert sum(len(b) for b in batches) == 38


def test_pipeline_shapes_range_and_grayscale(face_folder):
    files = data.find_dataset(face_folder).files[:10]
    rgb = next(iter(data.make_dataset(files, image_size=32, batch_size=10))).numpy()
    assert rgb.shape == (10, 32, 32, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0 and rgb.std() > 0.05
    gray = next(iter(data.make_dataset(files, image_size=32, channels=1, batch_size=10))).numpy()
    assert gray.shape == (10, 32, 32, 1)


def test_shuffle_is_seeded_and_repeat_cycles(face_folder):
    files = data.find_dataset(face_folder).files[:12]

    def first_batch(seed):
        return next(iter(data.make_dataset(files, image_size=8, batch_size=12, shuffle=True, seed=seed))).numpy()

    np.testing.assert_array_equal(first_batch(1), first_batch(1))
    assert not np.array_equal(first_batch(1), first_batch(2))
    repeated = data.make_dataset(files, image_size=8, batch_size=5, repeat=True)
    assert [len(b) for b in repeated.take(4)] == [5, 5, 2, 5]


def test_flip_mirrors_about_half_the_images_seeded_and_replayed_after_skipped_batches(face_folder):
    files = data.find_dataset(face_folder).files[:12]
    args = {"image_size": 8, "batch_size": 4, "shuffle": True, "seed": 5, "repeat": True}
    plain = np.concatenate([b.numpy() for b in data.make_dataset(files, **args).take(6)])
    flipped = np.concatenate([b.numpy() for b in data.make_dataset(files, flip=True, **args).take(6)])
    mirrored = [not np.array_equal(a, b) for a, b in zip(plain, flipped, strict=True)]
    for a, b, was in zip(plain, flipped, mirrored, strict=True):
        np.testing.assert_array_equal(b, a[:, ::-1] if was else a)  # the same order, each image mirrored or not
    assert 4 <= sum(mirrored) <= 20  # of 24: about half (the faces are not symmetric)
    assert mirrored[:12] != mirrored[12:]  # the second pass draws anew
    resumed = np.concatenate([b.numpy() for b in data.make_dataset(files, flip=True, skip_batches=2, **args).take(4)])
    np.testing.assert_array_equal(resumed, flipped[8:])


def test_file_cache_is_written_and_reused(face_folder, tmp_path):
    files = data.find_dataset(face_folder).files[:6]
    first = np.concatenate(list(data.make_dataset(files, image_size=8, cache=str(tmp_path))))
    assert list(tmp_path.glob("*.index"))
    second = np.concatenate(list(data.make_dataset(files, image_size=8, cache=str(tmp_path))))
    np.testing.assert_array_equal(first, second)


def test_file_cache_name_changes_with_whatever_changes_the_pixels(tmp_path, monkeypatch):
    """A replaced file (aligned again, say), another setting or another way of decoding makes
    another cache, so an older cache is never read for new pixels."""
    files = write_faces(tmp_path / "faces", ["a.jpg", "b.jpg"])
    name = data.file_cache_prefix(str(tmp_path), files, 64, 3, 148)
    assert data.file_cache_prefix(str(tmp_path), files, 64, 3, 148) == name
    assert data.file_cache_prefix(str(tmp_path), files, 64, 3, 120) != name
    stamp = os.stat(files[0])
    write_faces(tmp_path / "faces", ["a.jpg"], seed=1)  # the same name, other pixels
    os.utime(files[0], ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))
    replaced = data.file_cache_prefix(str(tmp_path), files, 64, 3, 148)
    assert replaced != name
    monkeypatch.setattr(data, "DECODE_VERSION", data.DECODE_VERSION + 1)
    assert data.file_cache_prefix(str(tmp_path), files, 64, 3, 148) not in (name, replaced)


@pytest.mark.parametrize(
    ("height", "width", "crop"), [(218, 178, 148), (256, 256, 148), (100, 300, 0), (218, 178, 178)]
)
def test_tensorflow_and_pillow_crops_agree(height, width, crop):
    expected = images.crop_box(height, width, crop)
    assert tuple(data.crop_window(tf.constant(height), tf.constant(width), crop).numpy()) == expected
    if (height, width, crop) == (218, 178, 148):
        assert expected == (35, 15, 148, 148)  # the documented CelebA face box


@pytest.mark.parametrize(
    ("name", "mode", "channels"),
    [
        ("face.jpg", "RGB", 3),
        ("face.png", "RGB", 3),
        ("grey.png", "L", 1),
        ("deep.png", "I;16", 3),
        ("rgba.png", "RGBA", 3),
    ],
)
def test_pillow_loader_matches_the_training_pipeline(tmp_path, name, mode, channels):
    """images.load_face (generate.py, evaluate.py) and data.py (training) see the same pixels:
    same decoding (16-bit samples keep their high byte), crop, area resize and rounding."""
    rgb = face_image(np.random.default_rng(5))
    if mode == "I;16":
        grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257 + 100
        image = Image.fromarray(grey.astype(np.uint16))
    else:
        image = rgb.convert(mode)
    path = tmp_path / name
    image.save(path, quality=95) if name.endswith(".jpg") else image.save(path)
    from_pipeline = next(iter(data.make_dataset([path], image_size=32, channels=channels, batch_size=1))).numpy()[0]
    from_pillow = images.load_face(path, 32, channels)
    assert from_pillow.shape == from_pipeline.shape == (32, 32, channels)
    assert np.abs(from_pillow - from_pipeline).max() <= 1 / 255 + 1e-6
    assert from_pillow.mean() < 0.9  # a 16-bit image is not clipped to a white tile


def decoded_crop(path: Path, crop: int, native: bool = True) -> np.ndarray:
    """data.decode_face's crop of a file at the crop's own size (the area resize then changes nothing)."""
    with Image.open(path) as image:
        side = images.crop_box(image.height, image.width, crop)[2]
    return data.decode_face(tf.constant(os.fsencode(path)), tf.constant(native), side, 3, crop).numpy()


# (width, height, crop, JPEG chroma subsampling 0 4:4:4 / 1 4:2:2 / 2 4:2:0): odd and even sizes,
# crop windows starting on and off the 8- and 16-pixel block edges.
CROP_CASES = [
    (178, 218, 148, 2),
    (200, 300, 100, 2),
    (333, 250, 148, 2),
    (333, 250, 100, 1),
    (333, 250, 60, 2),
    (64, 64, 148, 2),
    (64, 64, 170, 0),
    (101, 77, 148, 2),
    (101, 77, 100, 1),
    (256, 256, 100, 2),
    (57, 203, 31, 2),
    (390, 111, 177, 1),
    (245, 245, 0, 2),
    (20, 33, 1, 0),
]


@pytest.mark.parametrize(("width", "height", "crop", "subsampling"), CROP_CASES)
def test_training_and_load_face_crop_jpegs_alike(tmp_path, width, height, crop, subsampling):
    """The crop fused into the JPEG decode gives the pixels of a full decode (Pillow's, as
    images.load_face reads them) within one 8-bit level, for every size and crop."""
    path = tmp_path / "face.jpg"
    face_image(np.random.default_rng(width * height + crop), (width, height)).save(
        path, quality=90, subsampling=subsampling
    )
    top, left, side, _ = images.crop_box(height, width, crop)
    expected = images.read_pixels(path)[top : top + side, left : left + side]
    assert np.abs(decoded_crop(path, crop).astype(int) - expected).max() <= 1


def test_photos_with_an_exif_orientation_are_read_upright_everywhere(tmp_path):
    """A photo stored sideways with an EXIF orientation (6: turn 90 degrees clockwise to view):
    images.load_face and training both see it upright, as a viewer shows it."""
    upright = face_image(np.random.default_rng(3), (120, 160))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    plain, sideways_png, sideways_jpg = tmp_path / "plain.png", tmp_path / "sideways.png", tmp_path / "sideways.jpg"
    upright.save(plain)
    stored.save(sideways_png, exif=exif)
    stored.save(sideways_jpg, exif=exif, quality=95)
    expected = images.load_face(plain, 32)
    np.testing.assert_array_equal(images.load_face(sideways_png, 32), expected)
    assert np.abs(images.load_face(sideways_jpg, 32) - expected).mean() < 0.02  # only JPEG's loss
    for path in (sideways_png, sideways_jpg):
        assert image_files.check_image(path) == (None, False)  # read by Pillow in training too
        from_pipeline = next(iter(data.make_dataset([path], image_size=32, batch_size=1))).numpy()[0]
        assert np.abs(from_pipeline - images.load_face(path, 32)).max() <= 1 / 255 + 1e-6


OTHER_FORMATS = {".webp": {"lossless": True}, ".gif": {}, ".bmp": {}, ".tif": {}, ".tiff": {"compression": "tiff_lzw"}}


def test_every_format_load_face_reads_trains_alike_and_others_are_named(tmp_path, caplog):
    """The one list of formats: a folder's WebP, GIF, BMP and TIFF faces train as images.load_face
    reads them; image files of other formats are counted and named, with how to convert them."""
    face = face_image(np.random.default_rng(4))
    paths = []
    for suffix, options in OTHER_FORMATS.items():
        paths.append(tmp_path / f"face{suffix}")
        face.save(paths[-1], **options)
    (tmp_path / "photo.heic").write_bytes(b"\0" * 64)
    face.save(tmp_path / "face.ppm")  # Pillow reads it, but it is not one of the formats
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="data"):
        dataset = data.find_dataset(tmp_path)
    assert dataset.files == sorted(paths) and dataset.other_formats == [tmp_path / "face.ppm", tmp_path / "photo.heic"]
    assert "skipped 2 image files in formats training does not read (.heic, .ppm)" in caplog.text
    assert "mogrify -format png" in caplog.text and "2 image files in other formats skipped" in dataset.describe()
    batch = next(iter(data.make_dataset(dataset.files, image_size=32, batch_size=len(paths)))).numpy()
    for path, from_pipeline in zip(dataset.files, batch, strict=True):
        assert np.abs(from_pipeline - images.load_face(path, 32)).max() <= 1 / 255 + 1e-6, path.name
    for other in dataset.other_formats:  # generate.py --images refuses them too, saying how to convert them
        with pytest.raises(ValueError, match="give a JPEG, PNG, WebP, GIF, BMP or TIFF file .convert others to PNG"):
            images.load_face(other, 32)


def test_a_damaged_file_of_another_format_is_named_and_skipped(tmp_path, caplog):
    good, damaged = tmp_path / "good.webp", tmp_path / "damaged.webp"
    face_image(np.random.default_rng(5)).save(good)
    damaged.write_bytes(good.read_bytes()[:200])
    assert "Pillow can decode" in image_files.check_image(damaged)[0]
    with caplog.at_level(logging.WARNING, logger="data"):
        assert data.usable_files([good, damaged]) == [good]
    assert f"skipped 1 of 2 image files that cannot be decoded: {damaged} (not a JPEG" in caplog.text


def test_file_names_that_are_not_utf8_are_read_and_shown(tmp_path):
    """A name holding a byte that is not UTF-8 (Python holds it as a surrogate): listed, split,
    cached and decoded like any other, and printed with an escape, even under LANG=C."""
    folder = tmp_path / "faces"
    write_faces(folder, ["a.jpg", "b.png"])
    odd = folder / os.fsdecode(b"\xffface.jpg")
    odd.write_bytes((folder / "a.jpg").read_bytes())
    assert odd in data.find_dataset(folder).files and data.hash_split(odd.name) in (0, 1, 2)
    batches = data.make_dataset([odd, folder / "b.png"], image_size=8, cache=str(tmp_path / "cache"))
    assert sum(len(batch) for batch in batches) == 2
    environment = {**os.environ, "LANG": "C", "LC_ALL": "C"}
    environment.pop("PYTHONUTF8", None)
    command = [sys.executable, str(REPO / "data.py"), "--data", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 0 and "folder layout" in done.stdout and "3 images" in done.stdout, done.stderr
    assert "Traceback" not in done.stderr
    assert data.shown(odd).endswith("\\xffface.jpg")


def damaged_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that TensorFlow cannot decode (or must not: a bomb), with what the check says."""
    folder.mkdir(exist_ok=True)
    jpeg, png = folder / "source.jpg", folder / "source.png"
    face_image(np.random.default_rng(7)).save(jpeg, quality=90)
    face_image(np.random.default_rng(8)).save(png)
    raw, rng = jpeg.read_bytes(), np.random.default_rng(9)
    made = {}

    def write(name: str, content: bytes, problem: str) -> None:
        (folder / name).write_bytes(content)
        made[name] = (folder / name, problem)

    # Valid first and last bytes (what the old check looked at), garbage in between.
    write("garbage_body.jpg", b"\xff\xd8\xff" + rng.bytes(len(raw) - 5) + b"\xff\xd9", "damaged header")
    middle = bytearray(raw)
    middle[100 : len(raw) // 2] = rng.bytes(len(raw) // 2 - 100)
    write("garbage_middle.jpg", bytes(middle), "damaged header")
    write("markers_only.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 200 + b"\xff\xd9", "damaged header")
    frame = raw.index(b"\xff\xc0")  # the frame header's size fields claim 20000 x 20000 pixels
    write("bomb.jpg", raw[: frame + 5] + (20_000).to_bytes(2, "big") * 2 + raw[frame + 9 :], "above the")
    content = bytearray(png.read_bytes())
    start = content.index(b"IDAT") + 100
    content[start : start + 500] = rng.bytes(500)
    write("damaged_data.png", bytes(content), "checksum error in its IDAT chunk")
    write("garbage_body.png", content[:8] + rng.bytes(3000) + content[-12:], "damaged: no IHDR chunk first")
    made["bomb.png"] = (bomb_png(folder / "bomb.png"), "10000x10000 pixels, above the 89,478,485-pixel limit")
    return made


def test_damaged_images_are_named_counted_and_never_decoded(tmp_path, caplog):
    """Files whose first and last bytes look right but that TensorFlow cannot decode, and
    decompression bombs: the structural check skips each by name before TensorFlow sees it."""
    damaged = damaged_images(tmp_path / "damaged")
    good = tmp_path / "damaged" / "source.jpg"
    for name, (path, problem) in damaged.items():
        assert problem in image_files.check_image(path)[0], name
    with caplog.at_level(logging.WARNING, logger="data"):
        batches = list(data.make_dataset([good, *(path for path, _ in damaged.values()), good], image_size=8))
    assert sum(len(b) for b in batches) == 2
    assert f"skipped {len(damaged)} of {len(damaged) + 2} image files that cannot be decoded" in caplog.text
    assert "garbage_body.jpg (damaged header" in caplog.text and f"and {len(damaged) - 5} more" in caplog.text


def test_damaged_compressed_data_alone_passes_as_libjpeg_decodes_it(tmp_path):
    path = tmp_path / "scan.jpg"
    face_image(np.random.default_rng(10)).save(path, quality=90)
    raw = bytearray(path.read_bytes())
    scan = raw.index(b"\xff\xda") + 20
    raw[scan:-2] = bytes(len(raw) - 2 - scan)
    path.write_bytes(bytes(raw))
    assert image_files.check_image(path)[0] is None
    assert next(iter(data.make_dataset([path], image_size=8))).shape == (1, 8, 8, 3)


def png_file(pixels: np.ndarray, interlace: bool = False, depth: int | None = None) -> bytes:
    """A PNG of grey, grey+alpha, RGB or RGBA uint8/uint16 pixels [H, W, samples], written byte by
    byte (Pillow writes neither interlaced nor 16-bit RGB PNGs): filter type 0 on every row, the
    rows of each Adam7 pass in turn when interlaced. `depth` overrides the IHDR's bit depth."""
    height, width, samples = pixels.shape
    big_endian = pixels.astype(pixels.dtype.newbyteorder(">"))
    passes = image_files.ADAM7_PASSES if interlace else ((0, 0, 1, 1),)
    rows = [
        b"\0" + big_endian[y, x::dx].tobytes() for x, y0, dx, dy in passes if x < width for y in range(y0, height, dy)
    ]
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[samples]
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    header += bytes([depth or 8 * pixels.itemsize, colour, 0, 0, int(interlace)])
    image_data = png_chunk(b"IDAT", zlib.compress(b"".join(rows)))
    return image_files.PNG_SIGNATURE + png_chunk(b"IHDR", header) + image_data + png_chunk(b"IEND", b"")


def png_chunks(content: bytes) -> list[bytes]:
    chunks, position = [], 8
    while position < len(content):
        end = position + 12 + int.from_bytes(content[position : position + 4], "big")
        chunks.append(content[position:end])
        position = end
    return chunks


def with_image_data(content: bytes, image_data: bytes) -> bytes:
    """A PNG file with its IDAT chunks replaced by one holding `image_data`, with a valid checksum."""
    chunks = png_chunks(content)
    first = next(i for i, chunk in enumerate(chunks) if chunk[4:8] == b"IDAT")
    kept = [chunk for chunk in chunks if chunk[4:8] != b"IDAT"]
    return content[:8] + b"".join([*kept[:first], png_chunk(b"IDAT", image_data), *kept[first:]])


def image_data(content: bytes) -> bytes:
    return b"".join(chunk[8:-4] for chunk in png_chunks(content) if chunk[4:8] == b"IDAT")


def face_pixels(mode: str = "RGB", size: tuple[int, int] = (178, 218)) -> np.ndarray:
    return np.atleast_3d(np.asarray(face_image(np.random.default_rng(11), size).convert(mode)))


def written_png(path: Path, pixels: np.ndarray, interlace: bool = False) -> np.ndarray:
    path.write_bytes(png_file(pixels, interlace))
    return pixels


# Each writes a face to the path given, and returns its pixels when written here, not by Pillow.
VALID_PNGS = {
    "8-bit RGB": lambda path: face_image(np.random.default_rng(11)).save(path),
    "grey": lambda path: face_image(np.random.default_rng(11)).convert("L").save(path),
    "RGBA": lambda path: face_image(np.random.default_rng(11)).convert("RGBA").save(path),
    "16-bit grey": lambda path: Image.fromarray(face_pixels("L")[..., 0].astype(np.uint16) * 257).save(path),
    "palette": lambda path: face_image(np.random.default_rng(11)).convert("P").save(path),
    "1-bit": lambda path: face_image(np.random.default_rng(11)).convert("1").save(path),
    "16-bit RGB": lambda path: written_png(path, face_pixels().astype(np.uint16) * 257 + 3),
    "interlaced RGB": lambda path: written_png(path, face_pixels(), interlace=True),
    # 5x3 pixels: two of the seven passes are empty and write no rows
    "interlaced 16-bit grey+alpha": lambda path: written_png(
        path, face_pixels("LA", (5, 3)).astype(np.uint16) * 300, interlace=True
    ),
}


@pytest.mark.parametrize("kind", list(VALID_PNGS))
def test_valid_pngs_pass_the_image_data_check(tmp_path, kind):
    path = tmp_path / "face.png"
    pixels = VALID_PNGS[kind](path)
    assert image_files.check_image(path)[0] is None
    decoded = tf.io.decode_png(path.read_bytes(), dtype=tf.uint16 if kind.count("16") else tf.uint8).numpy()
    if pixels is not None:  # TensorFlow reads back what png_file wrote: the file is what it claims
        np.testing.assert_array_equal(decoded, pixels)


def damaged_pngs() -> dict[str, tuple[bytes, str]]:
    """PNGs whose chunks are intact (checksums recomputed) but whose image data TensorFlow cannot
    decode, with what the check says of each."""
    content = png_file(face_pixels())
    rows = zlib.decompress(image_data(content))
    row_size = 1 + 178 * 3
    corrupted = bytearray(image_data(content))
    corrupted[100:300] = np.random.default_rng(12).bytes(200)
    unfinished = zlib.compressobj()
    interlaced = png_file(face_pixels(), interlace=True)
    header = png_chunks(content)[0]
    return {
        "corrupted": (with_image_data(content, bytes(corrupted)), "its compressed image data "),
        "checksum": (
            with_image_data(content, image_data(content)[:-4] + b"\0\0\0\0"),
            "its compressed image data is broken (Error -3 while decompressing data: incorrect data check)",
        ),
        "one row short": (
            with_image_data(content, zlib.compress(rows[:-row_size])),
            f"its compressed image data holds {len(rows) - row_size} of the {len(rows)} bytes its 178x218 pixels need",
        ),
        "cut off": (with_image_data(content, image_data(content)[:300]), "its compressed image data holds "),
        "no end of stream": (
            with_image_data(content, unfinished.compress(rows) + unfinished.flush(zlib.Z_SYNC_FLUSH)),
            "its compressed image data is cut short (no end of stream)",
        ),
        "bad filter type": (
            with_image_data(content, zlib.compress(rows[: 6 * row_size] + b"\x05" + rows[6 * row_size + 1 :])),
            "its compressed image data has an invalid filter type 5 in row 7",
        ),
        "interlaced, one row short": (
            with_image_data(interlaced, zlib.compress(zlib.decompress(image_data(interlaced))[:-row_size])),
            "its compressed image data holds ",
        ),
        "bit depth 3": (
            content.replace(header, png_chunk(b"IHDR", header[8:16] + b"\x03" + header[17:-4])),
            "its IHDR chunk is invalid (bit depth 3, colour type 2",
        ),
    }


@pytest.mark.parametrize("case", list(damaged_pngs()))
def test_pngs_with_damaged_image_data_are_found_as_tensorflow_finds_them(tmp_path, case):
    content, problem = damaged_pngs()[case]
    path = tmp_path / "face.png"
    path.write_bytes(content)
    assert f"damaged: {problem}" in image_files.check_image(path)[0]
    with pytest.raises(tf.errors.InvalidArgumentError):  # what ignore_errors would drop, unnamed
        tf.io.decode_png(content)


def test_a_png_with_corrupted_image_data_is_named_and_counted(tmp_path, caplog):
    good, corrupted = tmp_path / "good.png", tmp_path / "corrupted.png"
    VALID_PNGS["8-bit RGB"](good)
    corrupted.write_bytes(damaged_pngs()["corrupted"][0])
    with caplog.at_level(logging.WARNING, logger="data"):
        batches = list(data.make_dataset([good, corrupted], image_size=8))
    assert sum(len(batch) for batch in batches) == 1
    assert f"skipped 1 of 2 image files that cannot be decoded: {corrupted} (damaged: its compressed image data " in (
        caplog.text
    )


def test_png_image_data_check_costs_little(tmp_path):
    """Checking a 178x218 RGB face's PNG costs about what zlib takes to inflate its image data."""
    files = write_faces(tmp_path, [f"face{i}.png" for i in range(20)])
    started = time.process_time()
    assert [path for path in files if image_files.check_image(path)[0]] == []
    assert (time.process_time() - started) / len(files) < 3e-3


def test_structural_check_passes_every_sample_file_and_costs_little():
    """On real CelebA files (when the sample is present): no false alarm, and cheap enough to
    check full CelebA's 202,599 files at the start of every run."""
    folder = CELEBA_SAMPLE / "img_align_celeba" / "img_align_celeba"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    files = sorted(folder.glob("*.jpg"))[:2000]
    started = time.process_time()
    assert [path for path in files if image_files.check_image(path)[0]] == []
    assert (time.process_time() - started) / len(files) < 500e-6


def small_kaggle(root: Path, **files: bytes | str) -> Path:
    """A Kaggle layout of 4 faces with its annotation files; keyword arguments replace a file's
    content (partition, attributes, identities)."""
    names = [f"{i:06d}.jpg" for i in range(1, 5)]
    write_faces(root / "img_align_celeba" / "img_align_celeba", names)
    contents = {
        "partition": "image_id,partition\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names)),
        "attributes": "\n".join(
            ["image_id," + ",".join(CELEBA_ATTRIBUTES)] + [f"{n}," + ",".join(["-1"] * 39 + ["1"]) for n in names]
        )
        + "\n",
        "identities": "".join(f"{n} {i + 1}\n" for i, n in enumerate(names)),
        **files,
    }
    targets = {"partition": "list_eval_partition.csv", "attributes": "list_attr_celeba.csv"}
    targets["identities"] = "identity_CelebA.txt"
    for key, name in targets.items():
        content = contents[key]
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


PARTITION_HEADER = "image_id,partition\n"
BAD_PARTITIONS = {
    "other header": ("image,split\n000001.jpg,0\n", "starts with 'image,split', not the header 'image_id,partition'"),
    "non-integer": (PARTITION_HEADER + "000001.jpg,0\n000002.jpg,train\n", "line 3: '000002.jpg train' is not"),
    "out of range": (PARTITION_HEADER + "000001.jpg,3\n", "partition 0 \\(train\\), 1 \\(validation\\) or 2"),
    "missing column": (PARTITION_HEADER + "000001.jpg\n", "line 2: '000001.jpg' is not a file name and a partition"),
    "non-UTF-8": (PARTITION_HEADER.encode() + b"000001.jpg,0\n\xff\xfe,1\n", "is not UTF-8 text \\(byte 32 is 0xff\\)"),
    "empty": ("", "list_eval_partition.csv is empty"),
    "header only": (PARTITION_HEADER, "lists no images"),
}


@pytest.mark.parametrize("case", list(BAD_PARTITIONS))
def test_bad_partition_file_is_one_line(tmp_path, case):
    content, message = BAD_PARTITIONS[case]
    with pytest.raises(data.DataError, match=message) as error:
        data.find_dataset(small_kaggle(tmp_path, partition=content))
    assert "\n" not in str(error.value) and "replace it with the file from the CelebA download" in str(error.value)


def attribute_file(*rows: str, blank_end: bool = False) -> str:
    return "\n".join(["image_id," + ",".join(CELEBA_ATTRIBUTES), *rows]) + ("\n\n\n" if blank_end else "\n")


def labels(*values: str) -> str:
    return ",".join(values + ("-1",) * (40 - len(values)))


BAD_ATTRIBUTES = {
    "word": (attribute_file("000001.jpg," + labels("no")), "5_o_Clock_Shadow of 000001.jpg is 'no', but CelebA"),
    "float": (attribute_file("000001.jpg," + labels("1", "-1.0")), "line 2: Arched_Eyebrows of 000001.jpg is '-1.0'"),
    "zero": (attribute_file("000001.jpg," + labels("0")), "is '0', but CelebA labels are -1 or 1"),
    "two": (attribute_file("000001.jpg," + labels("1", "1", "2")), "Attractive of 000001.jpg is '2'"),
    "short row": (attribute_file("000001.jpg,1,-1"), "line 2: 2 labels for 000001.jpg, expected 40"),
    "empty": ("", "list_attr_celeba.csv is empty"),
    "non-UTF-8": (attribute_file().encode() + b"\xe9t\xe9,1\n", "is not UTF-8 text"),
    "header": ("image_id,Smiling\n000001.jpg,1\n", "does not list the 40 CelebA attributes"),
}


@pytest.mark.parametrize("case", list(BAD_ATTRIBUTES))
def test_bad_attribute_file_stops_only_what_needs_labels(tmp_path, case):
    """Training reads the file list, the splits and the description: none of them fails."""
    content, message = BAD_ATTRIBUTES[case]
    dataset = data.find_dataset(small_kaggle(tmp_path, attributes=content))
    assert len(dataset.split("train")) == 2 and len(dataset.files) == 4
    assert "attributes unusable: " in dataset.describe() and "4 with identities" in dataset.describe()
    with pytest.raises(data.DataError, match=message) as error:
        dataset.attributes  # noqa: B018 (read on first use)
    assert "\n" not in str(error.value) and "or delete it (only attribute directions need it)" in str(error.value)


def test_blank_lines_and_a_byte_order_mark_are_accepted(tmp_path):
    rows = [f"00000{i}.jpg," + labels(*(["1"] if i == 2 else [])) for i in range(1, 5)]
    content = "\ufeff" + attribute_file(*rows[:2], "", *rows[2:], blank_end=True)
    dataset = data.find_dataset(small_kaggle(tmp_path, attributes=content))
    assert len(dataset.attributes) == 4 and dataset.attributes["000002.jpg"][0] == 1
    assert dataset.attributes["000003.jpg"].tolist() == [-1] * 40


def test_bad_identity_file_stops_only_identity_lookups(tmp_path):
    dataset = data.find_dataset(small_kaggle(tmp_path, identities="000001.jpg 1\n000002.jpg Alice\n"))
    assert "identities unusable" in dataset.describe() and "4 with attributes" in dataset.describe()
    with pytest.raises(data.DataError, match=r"identity_CelebA.txt line 2: '000002.jpg Alice' is not a file name"):
        dataset.identities  # noqa: B018


def test_original_layout_attribute_file_without_count_line(original_celeba, tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text(" ".join(CELEBA_ATTRIBUTES) + "\n")
    with pytest.raises(data.DataError, match="does not start with an image count line and a header line"):
        data.read_attributes(path)
    path.write_text("")
    with pytest.raises(data.DataError, match="does not start with an image count line"):
        data.read_attributes(path)


def test_run_folders_in_a_plain_data_folder_leave_its_faces_readable(tmp_path):
    """A run trained into the data folder itself (older train.py allowed it) or below it: its
    grids and checkpoints are skipped, the faces stay data; another tool's config.json hides nothing."""
    faces = write_faces(tmp_path, [f"face{i}.png" for i in range(4)])
    faces += write_faces(tmp_path / "other", ["face.jpg"])
    (tmp_path / "other" / "config.json").write_text('{"format": "some-other-tool"}')
    for run in (tmp_path, tmp_path / "runs" / "a"):
        (run / "config.json").parent.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps({"format": runs.RUN_FORMAT, "image_size": 64}))
        write_faces(run, ["loss_curves.png"])
        for folder in ("samples", "reconstructions", "generated/sample", "checkpoint"):
            write_faces(run / folder, ["epoch_001.png"])
    assert data.find_dataset(tmp_path).files == sorted(faces)


def test_available_memory_reads_meminfo_and_cgroup_limits(tmp_path):
    def fake_machine(cgroup_line: str, extra: dict[str, str]) -> Path:
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        files = {"proc/meminfo": "MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n", "proc/self/cgroup": cgroup_line}
        for name, text in {**files, **extra}.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        return root

    assert data.available_memory(fake_machine("0::/\n", {})) == 4_096_000_000
    extra = {"sys/fs/cgroup/job/memory.max": "3000000000\n", "sys/fs/cgroup/job/memory.current": "1000000000\n"}
    assert data.available_memory(fake_machine("0::/job\n", extra)) == 2_000_000_000  # v2: the job's limit
    extra = {
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "1500000000\n",  # a parent's limit counts too
        "sys/fs/cgroup/memory/memory.usage_in_bytes": "500000000\n",
        "sys/fs/cgroup/memory/job/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        "sys/fs/cgroup/memory/job/memory.usage_in_bytes": "400000000\n",
    }
    assert data.available_memory(fake_machine("5:memory:/job\n1:cpu:/job\n", extra)) == 1_000_000_000
    assert data.available_memory(tmp_path / "nowhere") is None  # not Linux: unknown, no check


def test_memory_cache_check(monkeypatch):
    monkeypatch.setattr(data, "available_memory", lambda: 10_000_000_000)
    data.check_memory_cache(202_599, 64, 3)  # full CelebA at 64x64: 3.0 GB with the overhead
    with pytest.raises(data.DataError, match="caching 202599 decoded 128x128 images in memory takes about 11.9 GB, "
                       "but only 10.0 GB is available; .*--cache DIR .about 10.0 GB of disk."):  # fmt: skip
        data.check_memory_cache(202_599, 128, 3)
    monkeypatch.setattr(data, "available_memory", lambda: None)
    data.check_memory_cache(10**9, 128, 3)  # unknown memory: no check
