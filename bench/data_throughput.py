"""Input-pipeline throughput of data.py next to the training step's consumption rate.

    python bench/data_throughput.py --data ../shared/celeba-sample
    python bench/data_throughput.py --data ./celeba --limit 20000 --image-size 64

Builds train.py's training pipeline (decode with fused crop, area resize, uint8 memory cache,
seeded shuffle, batch, float32) over the images and times the first pass (JPEG decode +
crop + resize, filling the cache) and the later passes (from the cache). Then times the
training step of the default model on batches from the same pipeline and prints the ratio
pipeline / training: above 1 the training is not input-bound. The training step is timed
after one full pass has filled the cache, i.e. in the steady state of epochs 2 and later. The OS file cache is warm
after the first run of this script; the first pass here measures decoding, not the disk.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_lines  # noqa: E402

import data  # noqa: E402
import vae  # noqa: E402


def images_per_second(dataset, batches: int | None = None) -> tuple[int, float]:
    """(images, images/second) for one pass over `dataset` (or its first `batches` batches)."""
    count = 0
    start = time.perf_counter()
    for batch in dataset if batches is None else dataset.take(batches):
        count += int(batch.shape[0])
    return count, count / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data", required=True, help="CelebA folder (any layout data.py reads)")
    parser.add_argument("--image-size", type=int, default=64, help="image side")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size")
    parser.add_argument("--limit", type=int, default=0, help="use the first N images (0: all)")
    parser.add_argument("--cached-passes", type=int, default=3, help="passes timed after the first")
    parser.add_argument("--train-steps", type=int, default=30, help="training steps timed")
    args = parser.parse_args(argv)

    files = data.find_dataset(args.data).files
    files = files[: args.limit] if args.limit else files
    print("\n".join(machine_lines()))
    print(
        f"pipeline: {len(files)} images -> {args.image_size}x{args.image_size}, batch {args.batch_size}, memory cache"
    )
    pipeline = data.make_dataset(files, image_size=args.image_size, batch_size=args.batch_size, shuffle=True, seed=0)
    count, first = images_per_second(pipeline)
    print(f"first pass (decode + crop + resize): {first:9.0f} images/s ({count} images)")
    cached = max(images_per_second(pipeline)[1] for _ in range(args.cached_passes))
    print(f"cached passes (best of {args.cached_passes}):     {cached:9.0f} images/s")

    config = {**vae.DEFAULT_RECIPE, "image_size": args.image_size, "batch_size": args.batch_size}
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


if __name__ == "__main__":
    main()
