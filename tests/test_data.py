"""data.py: layout detection, partitions, attributes, corrupt files and the decode pipeline."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import SMILING, face_image, write_faces
from PIL import Image

import data
import images
import runs


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
