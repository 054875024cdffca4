"""Input-pipeline throughput of data.py next to the training step's consumption rate.

    python bench/data_throughput.py --data ../shared/celeba-sample
    python bench/data_throughput.py --data ./celeba --limit 20000 --image-size 64
    python bench/data_throughput.py --fake-celeba 202599 --train-steps 0   # full-size CelebA layout
    python bench/data_throughput.py --data ../shared/celeba-sample --file-checks 500

Times train.py's training pipeline: the first pass (decode, crop, resize, filling the memory
cache) and the cached passes, with the resident memory the cache takes; then the training step
of the default model fed by it (--train-steps 0 skips this), and the ratio pipeline / training
(above 1: not input-bound). --fake-celeba N builds CelebA's Kaggle layout with N images linked
to the sample's, cycled, to measure the full-size listing and pipeline without the download.
--file-checks N only times, per file, what each way of finding damaged files costs:
image_files.check_image, Pillow's open + verify() and open + load(), and TensorFlow's decode
(what tf.data's ignore_errors relies on). Details: docs/training.md, "Performance".
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_lines  # noqa: E402

import data  # noqa: E402
import image_files  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "celeba-sample"


def images_per_second(dataset, batches: int | None = None) -> tuple[int, float]:
    """(images, images/second) for one pass over `dataset` (or its first `batches` batches)."""
    count = 0
    start = time.perf_counter()
    for batch in dataset if batches is None else dataset.take(batches):
        count += int(batch.shape[0])
    return count, count / (time.perf_counter() - start)


class Timer:
    """Wall-clock and CPU seconds (all of the process's threads) of a block: on a busy machine
    the CPU time is what the work costs, the wall-clock time what it took there."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f} s ({self.cpu:.2f} s of CPU)"


def resident_memory() -> tuple[int, int]:
    """(current, peak) resident memory of this process in bytes (Linux /proc)."""
    status = Path("/proc/self/status").read_text()
    current, peak = (
        int(re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE).group(1)) for key in ("VmRSS", "VmHWM")
    )
    return current * 1024, peak * 1024


def build_fake_celeba(count: int, folder: Path, sample: Path) -> Path:
    """CelebA's Kaggle layout with `count` images in `folder`: links to the sample's images,
    cycled and renamed 000001.jpg ..., and the sample's partition, attribute and identity rows
    cycled with them. Returns `folder`."""
    source = data.find_dataset(sample)
    if source.layout != "kaggle" or source.partition is None:
        raise SystemExit(f"error: {sample} is not a CelebA folder in the Kaggle layout ({source.describe()})")
    images = folder / "img_align_celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    link = os.link
    names = []
    for index in range(count):
        original = source.files[index % len(source.files)]
        name = f"{index + 1:06d}.jpg"
        try:
            link(original, images / name)
        except OSError:  # another file system, or hard links not allowed: symbolic links instead
            link = os.symlink
            link(original.resolve(), images / name)
        names.append((name, original.name))
    with open(folder / "list_eval_partition.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "partition"])
        writer.writerows((name, source.partition[original]) for name, original in names)
    with open(folder / "list_attr_celeba.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", *data.CELEBA_ATTRIBUTES])
        writer.writerows(
            (name, *source.attributes[original].tolist()) for name, original in names if original in source.attributes
        )
    with open(folder / "identity_CelebA.txt", "w") as handle:
        handle.writelines(
            f"{name} {source.identities[original]}\n" for name, original in names if original in source.identities
        )
    print(f"fake CelebA: {count} images in {folder} ({'hard' if link is os.link else 'symbolic'} links to {sample})")
    return folder


@contextlib.contextmanager
def fake_celeba(count: int, folder: str | None, sample: Path) -> Iterator[Path]:
    """A fake CelebA folder for the block: in `folder` (kept), or in a temporary one (removed)."""
    if folder:
        yield build_fake_celeba(count, Path(folder), sample)
        return
    with tempfile.TemporaryDirectory(prefix="fake-celeba-") as temporary:
        yield build_fake_celeba(count, Path(temporary) / "celeba", sample)


def measure(args: argparse.Namespace, data_folder: Path) -> None:
    import tensorflow as tf

    tf.constant(0)  # TensorFlow's start-up now, so that no timing below includes it
    with Timer() as found:
        dataset = data.find_dataset(data_folder)
    folder, recursive = (dataset.root, True) if dataset.layout == "folder" else (dataset.files[0].parent, False)
    with Timer() as listed:
        data.list_images(folder, recursive=recursive)  # the images and the files in other formats
    print(f"data.find_dataset: {found}; listing the {len(dataset.files)} image files alone: {listed}")
    print(f"  {dataset.describe()}")
    files = dataset.files[: args.limit] if args.limit else dataset.files
    size = args.image_size
    print(f"pipeline: {len(files)} images -> {size}x{size}, batch {args.batch_size}, memory cache")
    with Timer() as made:
        pipeline = data.make_dataset(files, image_size=size, batch_size=args.batch_size, shuffle=True, seed=0)
    print(f"data.make_dataset (checks each file's structure: JPEG markers, PNG chunks and image data): {made}")
    before, _ = resident_memory()
    with Timer() as decoding:
        count, first = images_per_second(pipeline)
    print(
        f"first pass (decode + crop + resize): {first:9.0f} images/s ({count} images; "
        f"{count / decoding.cpu:.0f} images per CPU second)"
    )
    cached = max(images_per_second(pipeline)[1] for _ in range(args.cached_passes))
    print(f"cached passes (best of {args.cached_passes}):     {cached:9.0f} images/s")
    after, peak = resident_memory()
    pixels = count * size * size * 3
    print(
        f"memory cache: {pixels / 1e9:.2f} GB of uint8 pixels; resident memory {before / 1e9:.2f} GB before the "
        f"first pass, {after / 1e9:.2f} GB after the cached passes, peak {peak / 1e9:.2f} GB: "
        f"{(peak - before) / pixels:.2f} bytes per pixel byte (data.MEMORY_CACHE_OVERHEAD is "
        f"{data.MEMORY_CACHE_OVERHEAD})"
    )
    if args.train_steps:
        train_step(args, files, cached, first)


def file_check_costs(files: Sequence[Path]) -> None:
    """CPU microseconds per file of each way of finding damaged image files (the best of 3 passes)."""
    import tensorflow as tf
    from PIL import Image

    def pillow(path: Path, load: bool) -> None:
        with Image.open(path) as image:
            image.load() if load else image.verify()

    contents = [path.read_bytes() for path in files]  # the OS file cache is warm for every option
    options = {
        "image_files.check_image (structure)": lambda: [image_files.check_image(path) for path in files],
        "Pillow Image.open + verify()": lambda: [pillow(path, load=False) for path in files],
        "Pillow Image.open + load() (decode)": lambda: [pillow(path, load=True) for path in files],
        "TensorFlow decode_jpeg (ignore_errors)": lambda: [
            tf.io.decode_jpeg(content, channels=3, dct_method="INTEGER_ACCURATE") for content in contents
        ],
    }
    print(f"per-file cost of finding damaged files, {len(files)} files (CPU time, best of 3 passes):")
    for name, run in options.items():
        cpu = []
        for _ in range(3):
            with Timer() as timer:
                run()
            cpu.append(timer.cpu)
        print(f"  {name:40s} {min(cpu) / len(files) * 1e6:8.0f} microseconds")


def train_step(args: argparse.Namespace, files: list[Path], cached: float, first: float) -> None:
    import recipe
    import vae

    # the default recipe's plain step: its discriminator phase is the run's last --adversarial-start steps
    config = {**recipe.DEFAULT_RECIPE, "image_size": args.image_size, "batch_size": args.batch_size, "adversarial": 0.0}
    model = vae.model_from_config(config)
    model.compile(optimizer=vae.make_optimizer(config))
    repeated = data.make_dataset(
        files, image_size=args.image_size, batch_size=args.batch_size, shuffle=True, drop_remainder=True, repeat=True
    )
    images_per_second(repeated, len(files) // args.batch_size)  # fill the cache: time the steady state
    model.fit(repeated, steps_per_epoch=5, epochs=1, verbose=0, shuffle=False)  # trace
    start = time.perf_counter()
    model.fit(repeated, steps_per_epoch=args.train_steps, epochs=1, verbose=0, shuffle=False)
    consumed = args.train_steps * args.batch_size / (time.perf_counter() - start)
    print(f"training step (float32, fed by the pipeline): {consumed:9.0f} images/s")
    print(f"pipeline / training: first pass {first / consumed:.1f}x, cached {cached / consumed:.1f}x")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="CelebA folder (any layout data.py reads)")
    source.add_argument("--fake-celeba", type=int, metavar="N", help="build a Kaggle layout of N linked images")
    parser.add_argument("--fake-dir", help="folder for --fake-celeba, kept (default: a temporary folder, removed)")
    parser.add_argument(
        "--sample", type=Path, default=SAMPLE, help="CelebA sample (Kaggle layout) --fake-celeba links to"
    )
    parser.add_argument("--image-size", type=int, default=64, help="image side")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size")
    parser.add_argument("--limit", type=int, default=0, help="use the first N images (0: all)")
    parser.add_argument("--cached-passes", type=int, default=3, help="passes timed after the first")
    parser.add_argument("--train-steps", type=int, default=30, help="training steps timed (0: skip)")
    parser.add_argument("--file-checks", type=int, metavar="N", help="only time the damaged-file checks on N images")
    args = parser.parse_args(argv)
    if args.fake_celeba is not None and args.fake_celeba < 1:
        parser.error("--fake-celeba needs a number of images, 1 or more")
    if args.fake_dir and Path(args.fake_dir).exists():
        parser.error(f"--fake-dir {args.fake_dir} already exists; give a new folder")

    print("\n".join(machine_lines()))
    try:
        if args.data and args.file_checks:
            file_check_costs(data.find_dataset(args.data).files[: args.file_checks])
            return
        if args.data:
            measure(args, Path(args.data))
            return
        start = time.perf_counter()
        with fake_celeba(args.fake_celeba, args.fake_dir, args.sample) as folder:
            print(f"built in {time.perf_counter() - start:.1f} s")
            measure(args, folder)
    except data.DataError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
