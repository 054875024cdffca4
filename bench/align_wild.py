"""How well align.py recovers CelebA faces from "wild" photos made of them, with known truth.

    python bench/align_wild.py --data ./celeba                 # 300 test images, the pretrained model
    python bench/align_wild.py --data ./celeba --template      # measure align.TEMPLATE instead

Each test image (aligned, 178x218) is rotated (up to 25 degrees), scaled (0.4 to 1.5), shifted
onto a larger canvas with a plain, graded or noisy background, mirrored (a third of them) or
stored sideways with an EXIF orientation (a third), saved as JPEG, and aligned back with
align.py. Reported: faces found; the landmark error (the eye centres and mouth corners found on
the wild photo, mapped back, against those found on the original, in frame pixels); the
reconstruction MSE of the aligned-back faces against the originals, beside the originals' own
reconstruction MSE; the same for tests/photos (people not in CelebA); and the pass-through
change (aligning an aligned image). --template prints the mean alignment points over --count
training images instead (align.TEMPLATE). Not a test: a measurement.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import align  # noqa: E402
import data  # noqa: E402
from images import face_from_pixels, read_pixels  # noqa: E402
from runs import open_backend  # noqa: E402

EXIF_ORIENTATION = 0x0112


def measure_template(finder: align.FaceFinder, files: list[Path]) -> np.ndarray:
    """Mean [4, 2] alignment points (Face.points: eye centres, mouth corners) found on aligned images."""
    points = []
    for path in files:
        faces = finder.find(read_pixels(path), whole_only=True)  # as align_face looks in its frames
        if faces:
            points.append(faces[0].points)
    points = np.array(points)
    print(f"faces found on {len(points)} of {len(files)} aligned training images")
    print(f"keypoint spread (std, frame pixels): {np.round(points.std(axis=0), 2).tolist()}")
    return points.mean(axis=0)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    kind = rng.integers(3)
    colour = rng.integers(0, 256, 3)
    if kind == 0:
        return np.broadcast_to(colour, (height, width, 3)).astype(np.uint8)
    if kind == 1:
        ramp = np.linspace(0, 1, width)[None, :, None]
        other = rng.integers(0, 256, 3)
        return np.broadcast_to(colour * (1 - ramp) + other * ramp, (height, width, 3)).astype(np.uint8)
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def wild_photo(original: np.ndarray, rng: np.random.Generator) -> tuple[bytes, np.ndarray, bool]:
    """(JPEG bytes of the wild photo, the frame -> photo transform, mirrored)."""
    angle = np.deg2rad(rng.uniform(-25, 25))
    scale = float(np.exp(rng.uniform(np.log(0.4), np.log(1.5))))
    side = int(align.FRAME_HEIGHT * scale * rng.uniform(1.6, 2.6))
    width, height = side + int(rng.integers(0, side // 2)), side
    centre = np.array([align.FRAME_WIDTH / 2, align.FRAME_HEIGHT / 2])
    place = np.array([width, height]) / 2 + rng.uniform(-0.2, 0.2, 2) * [width, height]
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    to_photo = np.hstack([rotation, (place - rotation @ centre)[:, None]])
    inverse = align.invert(to_photo).reshape(6)
    size = (width, height)
    face = Image.fromarray(original).transform(size, Image.Transform.AFFINE, inverse, Image.Resampling.BICUBIC)
    mask = Image.new("L", original.shape[1::-1], 255).transform(size, Image.Transform.AFFINE, inverse)
    photo = Image.fromarray(background(rng, height, width))
    photo.paste(face, (0, 0), mask)
    mirrored = rng.random() < 1 / 3
    if mirrored:
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        to_photo = align.compose(np.array([[-1.0, 0, width], [0, 1.0, 0]]), to_photo)
    buffer = io.BytesIO()
    if not mirrored and rng.random() < 0.5:  # stored turned a quarter, with the EXIF tag that turns it back
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6  # the viewer turns it 90 degrees clockwise
        photo.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=92, exif=exif)
    else:
        photo.save(buffer, "JPEG", quality=92)
    return buffer.getvalue(), to_photo, mirrored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CelebA folder: its own aligned images or align.py's")
    parser.add_argument("--run", default=str(REPO / "pretrained" / "celeba64"), help="model folder")
    parser.add_argument("--count", type=int, default=300, help="images to use")
    parser.add_argument("--detector", default=str(align.DETECTOR_FILE), help="face detector ONNX file")
    parser.add_argument("--template", action="store_true", help="measure align.TEMPLATE on training images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = data.find_dataset(args.data)
    finder = align.FaceFinder(args.detector)
    rng = np.random.default_rng(args.seed)
    if args.template:
        files = sorted(dataset.split("train"))
        files = [files[i] for i in sorted(rng.choice(len(files), min(args.count, len(files)), replace=False))]
        template = measure_template(finder, files)
        print("TEMPLATE =", np.round(template, 1).tolist())
        return
    files = sorted(dataset.split("test"))
    files = [files[i] for i in sorted(rng.choice(len(files), min(args.count, len(files)), replace=False))]
    backend = open_backend(args.run)
    originals, wilds, passes, names, landmark_errors, found = [], [], [], [], [], 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for number, path in enumerate(files):
            original = read_pixels(path)
            reference = finder.find(original)
            jpeg, to_photo, mirrored = wild_photo(original, rng)
            wild_path = Path(folder) / f"{number}.jpg"
            wild_path.write_bytes(jpeg)
            pixels = read_pixels(wild_path)
            faces = align.choose_faces(finder.find(pixels), "largest")
            if not (faces and reference):
                continue
            found += 1
            if reference:
                back = align.apply_transform(align.invert(to_photo), faces[0].points)
                truth = reference[0].points
                if mirrored:  # the mirror's right eye is the original's left, its right mouth corner the left
                    back = back[[1, 0, 3, 2]]
                landmark_errors.append(np.linalg.norm(back - truth, axis=1).mean())
            original = original[:, ::-1] if mirrored else original
            originals.append(original)
            passes.append(align.align_face(original, finder.find(original)[0], finder))
            wilds.append(align.align_face(pixels, faces[0], finder))
            names.append(path.name)
            if (number + 1) % 50 == 0:
                print(f"{number + 1} of {len(files)} in {time.perf_counter() - started:.0f} s", flush=True)
    size, channels = backend.image_size, backend.channels
    faces = lambda frames: np.stack([face_from_pixels(f, size, channels) for f in frames])  # noqa: E731
    truth, back, through = faces(originals), faces(wilds), faces(passes)

    def reconstruction_mse(images: np.ndarray, target: np.ndarray) -> np.ndarray:
        return ((backend.decode(backend.encode(images)[0]) - target) ** 2).mean(axis=(1, 2, 3))

    errors = np.array(landmark_errors)
    print(f"faces found: {found} of {len(files)}")
    print(
        f"landmark error (frame pixels): median {np.median(errors):.2f}, mean {errors.mean():.2f}, "
        f"90th percentile {np.percentile(errors, 90):.2f}, over 10: {(errors > 10).sum()}"
    )
    print("worst:", [(names[i], round(float(errors[i]), 1)) for i in np.argsort(-errors)[:5]])
    per_image = reconstruction_mse(truth, truth)
    direct = per_image.mean()
    print(
        f"reconstruction MSE against the originals (the --data images): direct {direct:.5f} "
        f"(per image: median {np.median(per_image):.5f}, 90th percentile {np.percentile(per_image, 90):.5f})"
    )
    for label, images in (("aligned back from the wild photos", back), ("aligned from the originals", through)):
        mse = reconstruction_mse(images, truth).mean()
        print(f"  {label}: {mse:.5f} (ratio {mse / direct:.3f})")
    print(f"aligned back against aligned from the originals: {reconstruction_mse(back, through).mean():.5f}")
    print(f"aligned back against themselves: {reconstruction_mse(back, back).mean():.5f}")
    for photo in sorted((REPO / "tests" / "photos").glob("*.jpg")):
        (_, frame), *_ = align.align_photo(read_pixels(photo), finder, name=photo.name)
        face = faces([frame])
        print(f"{photo.name} (not in CelebA): reconstruction MSE {reconstruction_mse(face, face)[0]:.5f}")
    print(
        f"pass-through (an aligned image aligned again): mean |change| "
        f"{np.abs(through - truth).mean() * 255:.2f} levels, MSE {((through - truth) ** 2).mean():.5f}"
    )


if __name__ == "__main__":
    main()
