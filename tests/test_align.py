"""align.py: the transform math on numpy arrays, the detector's decoding, and alignment of real
photos of people who are not in CelebA (tests/photos), with known truth where the test makes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import CELEBA_SAMPLE, REPO
from PIL import Image

import align
import data
import generate
from images import face_from_pixels, read_pixels

PHOTOS = REPO / "tests" / "photos"


@pytest.fixture(scope="module")
def finder() -> align.FaceFinder:
    return align.FaceFinder()


def turn(angle_degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    angle = np.deg2rad(angle_degrees)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, np.array(shift, float)[:, None]])


def transformed_photo(frame: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The frame placed on a grey canvas of `size` through `matrix` (frame -> canvas)."""
    inverse = align.invert(matrix).reshape(6)
    image = Image.fromarray(frame).transform(size, Image.Transform.AFFINE, inverse, Image.Resampling.BICUBIC)
    mask = Image.new("L", frame.shape[1::-1], 255).transform(size, Image.Transform.AFFINE, inverse)
    canvas = Image.new("RGB", size, (120, 130, 140))
    canvas.paste(image, (0, 0), mask)
    return np.asarray(canvas)


# --------------------------------------------------------------------------- math
def test_similarity_transform_recovers_rotation_scale_and_shift():
    rng = np.random.default_rng(0)
    for _ in range(20):
        matrix = turn(rng.uniform(-180, 180), rng.uniform(0.2, 5), rng.uniform(-100, 100, 2))
        points = rng.uniform(0, 200, (5, 2))
        found = align.similarity_transform(points, align.apply_transform(matrix, points))
        np.testing.assert_allclose(found, matrix, atol=1e-9)
    mirrored = np.array([[0, 0], [10, 0], [0, 10]], float)
    reflection = align.similarity_transform(mirrored, mirrored * [-1, 1])  # no reflection: a compromise
    assert np.linalg.det(reflection[:, :2]) >= 0


def test_compose_and_invert():
    rng = np.random.default_rng(1)
    outer, inner = turn(30, 2, (5, -3)), turn(-70, 0.5, (10, 20))
    points = rng.uniform(-50, 50, (7, 2))
    both = align.apply_transform(align.compose(outer, inner), points)
    np.testing.assert_allclose(both, align.apply_transform(outer, align.apply_transform(inner, points)))
    np.testing.assert_allclose(align.apply_transform(align.invert(outer), align.apply_transform(outer, points)), points)


def test_anchors_are_the_short_range_models_896_cell_centres():
    anchors = align.detector_anchors(128, (8, 16), (2, 6))
    assert anchors.shape == (896, 2)
    assert anchors.min() == pytest.approx(0.5 / 16) and anchors.max() == pytest.approx(15.5 / 16)
    np.testing.assert_array_equal(anchors[0], anchors[1])  # two anchors per cell of the 16x16 grid
    np.testing.assert_allclose(anchors[512], [0.5 / 8, 0.5 / 8])  # the 8x8 grid starts after 16 * 16 * 2


def test_decoding_and_merging_detections():
    anchors = np.array([[0.5, 0.5], [0.52, 0.5], [0.1, 0.1]], np.float32)
    regressors = np.zeros((3, 16), np.float32)
    regressors[:, 2:4] = 0.2 * 128  # boxes 0.2 wide and high
    regressors[1, 4:6] = 0.01 * 128  # the second one's first keypoint a little to the right
    boxes, scores, keypoints = align.decode_detections(regressors, np.array([3.0, 1.0, -2.0]), anchors, 128)
    assert len(boxes) == 2  # the third scores below MIN_SCORE
    np.testing.assert_allclose(boxes[0], [0.4, 0.4, 0.6, 0.6], atol=1e-6)
    merged = align.merge_detections(boxes, scores, keypoints)
    assert len(merged) == 1  # they overlap: one face, its keypoints the score-weighted mean
    weights = scores / scores.sum()
    np.testing.assert_allclose(merged[0][2][0], weights @ keypoints[:, 0], atol=1e-6)
    apart = align.merge_detections(np.array([[0, 0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]]), scores, keypoints)
    assert len(apart) == 2 and apart[0][1] == scores.max()


def test_warp_keeps_an_image_through_the_identity_and_repeats_edges_beyond_it():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (align.FRAME_HEIGHT, align.FRAME_WIDTH, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align.warp(pixels, turn(0, 1, (0, 0))), pixels)
    shifted = align.warp(pixels, turn(0, 1, (20, 0)))  # the photo moved right: its left edge repeats
    np.testing.assert_array_equal(shifted[:, 20:], pixels[:, :-20])
    np.testing.assert_array_equal(shifted[:, :20], np.repeat(pixels[:, :1], 20, axis=1))
    huge = np.zeros((8000, 6000, 3), np.uint8)  # a 48-megapixel portrait filled by its face: shrunk to the frame
    assert align.warp(huge, turn(0, 0.03, (0, 0))).shape == (align.FRAME_HEIGHT, align.FRAME_WIDTH, 3)


# --------------------------------------------------------------------------- real photos
@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg", "collins.jpg", "hopper.jpg", "obama_far.jpg"])
def test_a_portrait_is_aligned_onto_the_template(finder, name):
    ((_, frame),) = align.align_photo(read_pixels(PHOTOS / name), finder, name=name)
    assert frame.shape == (align.FRAME_HEIGHT, align.FRAME_WIDTH, 3)
    again = finder.find(frame)  # found again in the aligned frame, it needs no more alignment
    assert len(again) == 1
    correction = align.similarity_transform(again[0].points, align.TEMPLATE)
    corners = np.array(
        [[0, 0], [align.FRAME_WIDTH, 0], [0, align.FRAME_HEIGHT], [align.FRAME_WIDTH, align.FRAME_HEIGHT]]
    )
    # Face Mesh finds the same points again to a pixel or two: the corners move a few frame pixels
    assert np.linalg.norm(align.apply_transform(correction, corners) - corners, axis=1).max() < 5


def test_a_transformed_photo_aligns_back_to_the_same_crop(finder, tmp_path):
    """Known truth: the aligned portrait, turned, scaled, shifted onto a canvas, mirrored or stored
    sideways with an EXIF orientation, aligns back to nearly the same 64x64 face."""
    reference = align.align_photo(read_pixels(PHOTOS / "obama.jpg"), finder)[0][1]
    expected = face_from_pixels(reference, 64)
    for angle, scale, mirror, exif in ((25, 0.6, False, False), (-20, 1.4, True, False), (10, 0.9, False, True)):
        photo = Image.fromarray(transformed_photo(reference, turn(angle, scale, (180, 120)), (520, 460)))
        path = tmp_path / f"{angle}.jpg"
        if mirror:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if exif:  # stored a quarter turn round, with the tag that turns it upright
            tag = Image.Exif()
            tag[0x0112] = 6
            photo.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=tag)
        else:
            photo.save(path, quality=95)
        back = face_from_pixels(align.align_photo(read_pixels(path), finder)[0][1], 64)
        target = expected[:, ::-1] if mirror else expected
        # a few 8-bit levels: two resamplings, JPEG, and Face Mesh repeating itself to about a pixel
        assert np.abs(back - target).mean() < 0.04, (angle, scale, mirror, exif)


def two_faces() -> np.ndarray:
    """Two portraits side by side: Collins (larger face) left, Obama right."""
    left = Image.open(PHOTOS / "collins.jpg").convert("RGB").resize((1100, 1100))
    right = Image.open(PHOTOS / "obama.jpg").convert("RGB")
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return np.asarray(canvas)


def test_several_faces_largest_all_or_one_by_number(finder):
    pixels = two_faces()
    faces = finder.find(pixels)
    assert len(faces) == 2
    largest, second = align.choose_faces(faces, "all")
    assert largest.size > second.size and largest.box[0] < pixels.shape[1] / 2 < second.box[0]
    assert align.choose_faces(faces, "largest") == [largest] and align.choose_faces(faces, 1) == [second]
    with pytest.raises(align.AlignError, match="face number 2 asked for, but only 2 found"):
        align.choose_faces(faces, 2)
    assert len(align.align_photo(pixels, finder, "all")) == 2


def test_no_face_is_an_error_naming_the_photo_and_a_small_face_a_warning(finder, capsys):
    ramp = np.linspace(0, 255, 300 * 400 * 3).reshape(300, 400, 3).astype(np.uint8)
    with pytest.raises(align.AlignError, match="^no face found in ramp.png$"):
        align.align_photo(ramp, finder, name="ramp.png")
    tiny = Image.open(PHOTOS / "obama.jpg").convert("RGB").resize((96, 120), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (400, 300), (90, 90, 90))
    canvas.paste(tiny, (150, 90))
    assert len(align.align_photo(np.asarray(canvas), finder, name="tiny.jpg")) == 1
    assert "warning: the face in tiny.jpg is small" in capsys.readouterr().err


def test_parse_faces():
    assert align.parse_faces("all") == "all" and align.parse_faces("3") == 3
    with pytest.raises(Exception, match="give largest, all or a face number"):
        align.parse_faces("biggest")


# --------------------------------------------------------------------------- the command
def test_a_folder_of_photos_becomes_aligned_crops_and_a_stopped_run_goes_on(tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    for name in ("obama.jpg", "hopper.jpg"):
        (photos / name).write_bytes((PHOTOS / name).read_bytes())
    Image.fromarray(two_faces()).save(photos / "more" / "two.png")
    Image.new("RGB", (200, 200), "teal").save(photos / "wall.png")
    (photos / "broken.jpg").write_bytes(b"not a photo")
    out, one_at_a_time = tmp_path / "aligned", tmp_path / "aligned-1"
    align.main(["--data", str(photos), "--out", str(out), "--faces", "all", "--jobs", "3"])
    captured = capsys.readouterr()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "hopper.jpg",
        "more/two_0.jpg",
        "more/two_1.jpg",
        "obama.jpg",
    ]
    assert f"wrote 4 aligned faces from 3 of 5 photos to {out}; 1 no face; 1 unreadable" in captured.out
    assert f"no face found in {photos / 'wall.png'}" in captured.err and "broken.jpg" in captured.err
    with Image.open(out / "obama.jpg") as crop:
        assert crop.size == (align.FRAME_WIDTH, align.FRAME_HEIGHT)
    align.main(["--data", str(photos), "--out", str(one_at_a_time), "--faces", "all", "--jobs", "1"])
    assert all((one_at_a_time / p.relative_to(out)).read_bytes() == p.read_bytes() for p in out.rglob("*.jpg"))
    assert (
        f"wrote 4 aligned faces from 3 of 5 photos to {one_at_a_time}; 1 no face; 1 unreadable"
        in capsys.readouterr().out
    )
    before = (out / "obama.jpg").stat().st_mtime_ns
    align.main(["--data", str(photos), "--out", str(out)])  # again: the aligned photos are kept
    assert (
        "wrote 0 aligned faces from 0 of 5 photos to" in (again := capsys.readouterr().out)
        and "; 3 done before" in again
    )
    assert (out / "obama.jpg").stat().st_mtime_ns == before


def test_a_celeba_root_keeps_its_layout_partition_and_labels(kaggle_celeba, tmp_path, capsys):
    """Aligning a Kaggle-layout root writes the crops where its images were and copies the partition,
    attribute and identity files, so the aligned folder is read as the same data set."""
    root, out = tmp_path / "celeba", tmp_path / "aligned"
    folder = root / "img_align_celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    names = {
        "000007.jpg": "obama.jpg",
        "000008.jpg": "hopper.jpg",
        "000010.jpg": "collins.jpg",
    }  # train, validation, test
    for name, photo in names.items():
        (folder / name).write_bytes((PHOTOS / photo).read_bytes())
    for name in data.ANNOTATIONS["kaggle"]:
        (root / name).write_bytes((kaggle_celeba / name).read_bytes())
    align.main(["--data", str(root), "--out", str(out)])
    assert "copied list_eval_partition.csv, list_attr_celeba.csv, identity_CelebA.txt" in capsys.readouterr().out
    source, aligned = data.find_dataset(root), data.find_dataset(out)
    assert aligned.layout == "kaggle" and [p.name for p in aligned.files] == sorted(names)
    for split in ("train", "validation", "test"):
        assert [p.name for p in aligned.split(split)] == [p.name for p in source.split(split)]
    assert aligned.split("train") and aligned.split("validation") and aligned.split("test")
    assert {n: v.tolist() for n, v in aligned.attributes.items()} == {
        n: v.tolist() for n, v in source.attributes.items()
    }
    assert aligned.identities == source.identities


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("photos/aligned", "lies inside --data"),
        ("notes.txt", "is a file; give a folder path"),
    ],
)
def test_the_command_refuses_an_out_that_would_mix_with_or_replace_the_photos(tmp_path, capsys, out, message):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "obama.jpg").write_bytes((PHOTOS / "obama.jpg").read_bytes())
    (tmp_path / "notes.txt").write_text("notes")
    with pytest.raises(SystemExit):
        align.run_main(lambda: align.main(["--data", str(tmp_path / "photos"), "--out", str(tmp_path / out)]))
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["obama.jpg"]


# --------------------------------------------------------------------------- generate.py
def test_generate_aligns_photos_given_with_images(tmp_path, capsys):
    out = tmp_path / "grid.png"
    generate.main(
        ["--mode", "reconstruct", "--images", str(PHOTOS / "obama.jpg"), "--out", str(out), "--save-individual"]
    )
    aligned = np.asarray(Image.open(tmp_path / "grid" / "r01_c00.png"), np.float32) / 255  # row 0: the photo
    expected = face_from_pixels(align.align_photo(read_pixels(PHOTOS / "obama.jpg"), align.FaceFinder())[0][1], 64)
    assert np.abs(aligned - expected).max() <= 1 / 255 + 1e-6  # the grid's input row is the aligned face
    generate.main(["--mode", "reconstruct", "--images", str(PHOTOS / "obama.jpg"), "--out", str(out), "--no-align"])
    two = tmp_path / "two.png"
    Image.fromarray(two_faces()).save(two)
    generate.main(["--mode", "reconstruct", "--images", str(two), "--faces", "all", "--out", str(out)])
    assert "reconstruct: 3 rows x 2 columns" in capsys.readouterr().out  # photo, input, mean


def test_generate_names_a_photo_without_a_face_in_one_line(tmp_path, capsys):
    wall = tmp_path / "wall.png"
    Image.new("RGB", (300, 200), "teal").save(wall)
    with pytest.raises(SystemExit) as stop:
        generate.run_main(
            lambda: generate.main(["--mode", "attribute", "--images", str(wall), "--out", str(tmp_path / "a.png")])
        )
    assert stop.value.code == 1
    assert capsys.readouterr().err == (
        f"error: no face found in {wall}; give a photo of a face, or --no-align for an aligned crop\n"
    )
    assert not (tmp_path / "a.png").exists()


# --------------------------------------------------------------------------- real CelebA
@pytest.mark.skipif(not CELEBA_SAMPLE.is_dir(), reason="needs the CelebA sample in ../shared/celeba-sample")
def test_celeba_images_pass_through_nearly_unchanged_and_their_template_holds(finder):
    """Aligning an aligned CelebA image moves it little, and the template is where the eyes and
    mouth corners are found on average (bench/align_wild.py measures both on more images)."""
    import data

    files = sorted(data.find_dataset(CELEBA_SAMPLE).split("train"))[::500]
    points, changes = [], []
    for path in files:
        pixels = read_pixels(path)
        face = align.choose_faces(finder.find(pixels), "largest")[0]
        points.append(face.points)
        changes.append(
            np.abs(face_from_pixels(align.align_face(pixels, face, finder), 64) - face_from_pixels(pixels, 64)).mean()
        )
    assert np.abs(np.mean(points, axis=0) - align.TEMPLATE).max() < 1.5
    assert np.median(changes) < 0.06  # in [0, 1]: CelebA's own framing varies around the template


def test_a_stopped_folder_run_keeps_its_crops_and_the_same_command_goes_on(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "aligned"
    photos.mkdir()
    # Many photos (hard links: no copies), so that the run is still going when the signal arrives
    # however busy the machine; all but a few unaligned ones are removed before the second run.
    count = 1000
    for number in range(count):
        os.link(PHOTOS / "collins.jpg", photos / f"p{number:03d}.jpg")
    command = [sys.executable, str(REPO / "align.py"), "--data", str(photos), "--out", str(out)]
    # A caught SIGINT is reset to its default in the child, which then stops on it: a suite started in
    # the background (`nohup ... &`) would pass it on ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while not list(out.glob("*.jpg")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("stopped; run the same command again")
    written = sorted(out.glob("*.jpg"))
    assert 0 < len(written) < count and not list(out.glob(".*.tmp"))  # whole crops only
    done = {path.stem for path in written}
    for photo in [photo for photo in sorted(photos.iterdir()) if photo.stem not in done][3:]:
        photo.unlink()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"wrote 3 aligned faces from 3 of {len(written) + 3} photos" in result.stdout
    assert f"{len(written)} done before" in result.stdout and len(list(out.glob("*.jpg"))) == len(written) + 3


def test_the_default_jobs_stay_within_the_limit_on_a_machine_with_many_cpus(monkeypatch):
    monkeypatch.setattr(align.os, "cpu_count", lambda: 4 * align.MAX_JOBS)
    assert align.build_parser().parse_args(["--data", "d", "--out", "o"]).jobs == align.MAX_JOBS
    monkeypatch.setattr(align.os, "cpu_count", lambda: None)
    assert align.build_parser().parse_args(["--data", "d", "--out", "o"]).jobs == 1
