"""Which differences between people's photos and CelebA's crops hurt the model's reconstructions.

    python bench/photo_factors.py --data ./celeba            # 300 test images, the pretrained model
    python bench/photo_factors.py --data ./celeba --run runs/<name> --count 1000

Each aligned test image (178x218) is changed in one way a photo may differ from CelebA (JPEG
quality, blur, noise, brightness, contrast, colour cast, saturation, a small shift, scale or
rotation of the framing), then cropped and resized as generate.py does and reconstructed.
Reported per change: the mean reconstruction MSE against the changed image itself (how well the
model reproduces such inputs), its ratio to the unchanged images' MSE, and the MSE of the
reconstruction against the unchanged image's reconstruction (how far the change moves the
face the model sees). Not a test: a measurement.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import data  # noqa: E402
from images import face_from_pixels  # noqa: E402
from runs import open_backend  # noqa: E402


def jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def change(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer).convert("RGB")

    return change


def noise(sigma: float) -> Callable[[Image.Image], Image.Image]:
    def change(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, np.float32)
        noisy = pixels + np.random.default_rng(0).normal(0, sigma, pixels.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))

    return change


def cast(red: float, blue: float) -> Callable[[Image.Image], Image.Image]:
    def change(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, np.float32) * np.array([red, 1.0, blue], np.float32)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    return change


def reframe(shift: float = 0.0, scale: float = 1.0, degrees: float = 0.0) -> Callable[[Image.Image], Image.Image]:
    """Move the face in the frame: `shift` pixels right and down, `scale` about the centre, `degrees` turned
    (small enough that the central crop takes no pixel from outside the image)."""

    def change(image: Image.Image) -> Image.Image:
        centre = np.array(image.size) / 2
        angle = np.deg2rad(degrees)
        inverse = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]) / scale
        offset = centre - inverse @ (centre + shift)  # output (x, y) -> input inverse @ (x, y) + offset
        coefficients = (*inverse[0], offset[0], *inverse[1], offset[1])
        return image.transform(image.size, Image.AFFINE, coefficients, Image.BICUBIC)

    return change


CHANGES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "JPEG quality 30": jpeg(30),
    "JPEG quality 10": jpeg(10),
    "blur radius 1": lambda image: image.filter(ImageFilter.GaussianBlur(1)),
    "blur radius 2": lambda image: image.filter(ImageFilter.GaussianBlur(2)),
    "noise sigma 8": noise(8),
    "brightness x0.7": lambda image: ImageEnhance.Brightness(image).enhance(0.7),
    "brightness x1.3": lambda image: ImageEnhance.Brightness(image).enhance(1.3),
    "contrast x0.7": lambda image: ImageEnhance.Contrast(image).enhance(0.7),
    "warm cast (red x1.15, blue x0.85)": cast(1.15, 0.85),
    "cool cast (red x0.85, blue x1.15)": cast(0.85, 1.15),
    "grey (saturation 0)": lambda image: ImageEnhance.Color(image).enhance(0.0),
    "shift 3 px": reframe(shift=3),
    "scale x1.05": reframe(scale=1.05),
    "scale x0.95": reframe(scale=0.95),
    "rotation 5 degrees": reframe(degrees=5),
    "shift 3 px, scale x1.05, rotation 3 degrees": reframe(3, 1.05, 3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CelebA folder (its test partition is used)")
    parser.add_argument(
        "--run", default=str(REPO / "pretrained" / "celeba64"), help="model folder (default: pretrained)"
    )
    parser.add_argument("--count", type=int, default=300, help="test images used")
    args = parser.parse_args()
    backend = open_backend(args.run)
    files = data.find_dataset(args.data).split("test")[: args.count]
    originals = [Image.open(path).convert("RGB") for path in files]

    def faces(images: list[Image.Image]) -> np.ndarray:
        return np.stack([face_from_pixels(np.asarray(image), backend.image_size) for image in images])

    def reconstruct(images: np.ndarray) -> np.ndarray:
        return backend.decode(backend.encode(images)[0])

    started = time.perf_counter()
    plain = faces(originals)
    plain_reconstructions = reconstruct(plain)
    baseline = float(((plain_reconstructions - plain) ** 2).mean())
    print(f"{len(files)} test images of {args.data}, model {args.run}")
    print(f"{'change':36s} {'MSE vs itself':>14s} {'ratio':>6s} {'MSE vs plain reconstruction':>28s}")
    print(f"{'none':36s} {baseline:14.5f} {1.0:6.2f} {0.0:28.5f}")
    for name, change in CHANGES.items():
        changed = faces([change(image) for image in originals])
        reconstructions = reconstruct(changed)
        own = float(((reconstructions - changed) ** 2).mean())
        moved = float(((reconstructions - plain_reconstructions) ** 2).mean())
        print(f"{name:36s} {own:14.5f} {own / baseline:6.2f} {moved:28.5f}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
