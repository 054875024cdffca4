"""data.py: layout detection, partitions, attributes, corrupt files and the decode pipeline."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf
from conftest import SMILING, face_image
from PIL import Image

import data
import images


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
    with pytest.raises(data.DataError, match="no .jpg/.png images found"):
        data.find_dataset(tmp_path)


def test_unknown_attribute_lists_valid_names():
    assert data.attribute_index("smiling") == SMILING
    with pytest.raises(data.DataError, match="unknown attribute 'Smile'.*Smiling.*Young"):
        data.attribute_index("Smile")


def test_bad_attribute_header_is_reported(tmp_path):
    path = tmp_path / "list_attr_celeba.csv"
    path.write_text("image_id,Smiling\n000001.jpg,1\n")
    with pytest.raises(data.DataError, match="40 CelebA attributes"):
        data.read_attributes_csv(path)


def test_corrupt_files_are_skipped_and_counted(kaggle_celeba, caplog):
    files = data.find_dataset(kaggle_celeba).files
    with caplog.at_level(logging.WARNING, logger="data"):
        good = data.usable_files(files)
    assert len(good) == 38
    assert "skipped 2 corrupt or truncated image file(s) of 40" in caplog.text
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


def test_file_cache_is_written_and_reused(face_folder, tmp_path):
    files = data.find_dataset(face_folder).files[:6]
    first = np.concatenate(list(data.make_dataset(files, image_size=8, cache=str(tmp_path))))
    assert list(tmp_path.glob("*.index"))
    second = np.concatenate(list(data.make_dataset(files, image_size=8, cache=str(tmp_path))))
    np.testing.assert_array_equal(first, second)


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


def test_undecodable_jpeg_that_passes_the_quick_check_is_skipped(tmp_path):
    good = tmp_path / "good.jpg"
    face_image(np.random.default_rng(6)).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 200 + b"\xff\xd9")  # right markers, no image inside
    assert data.is_readable_image(broken)
    batches = list(data.make_dataset([good, broken, good], image_size=8, batch_size=4))
    assert sum(len(b) for b in batches) == 2
