"""What recomputing BatchNorm's statistics for a run's saved EMA weights does to its validation MSE.

    python bench/ema_batchnorm.py --run runs/<name> --data ./celeba
    python bench/ema_batchnorm.py --run runs/<name> --data ./celeba --batches 50 100 200

For a run whose saved EMA weights kept the BatchNorm statistics gathered with the raw weights
(train.py now recomputes them before saving): loads its encoder.keras and decoder.keras,
measures the validation images' reconstruction MSE (posterior mean), then, for each --batches N,
recomputes every BatchNorm layer's statistics over N training batches with
vae.recompute_batch_norm, as train.py does, and measures again. Not a test: a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import data  # noqa: E402
import runs  # noqa: E402
import vae  # noqa: E402


def reconstruction_mse(encoder, decoder, images: np.ndarray) -> float:
    errors = []
    for start in range(0, len(images), 256):
        batch = images[start : start + 256]
        mu = encoder(batch, training=False)[0]
        errors.append(((np.asarray(decoder(mu, training=False)) - batch) ** 2).mean(axis=(1, 2, 3)))
    return float(np.concatenate(errors).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="train.py run folder with encoder.keras and decoder.keras")
    parser.add_argument("--data", required=True, help="the run's CelebA folder")
    parser.add_argument("--batches", type=int, nargs="+", default=[25, 100, 300], help="training batches used")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = runs.read_config(args.run)
    dataset = data.find_dataset(args.data)
    settings = {"image_size": config["image_size"], "channels": config["channels"], "crop": config["crop"]}
    validation = np.concatenate(list(data.make_dataset(dataset.split("validation"), batch_size=256, **settings)))
    train = data.make_dataset(dataset.split("train"), batch_size=64, shuffle=True, seed=args.seed, **settings)
    pool = [np.asarray(batch) for batch in train.take(max(args.batches))]
    started = os.times()
    encoder, decoder = runs.load_model(args.run, "encoder", config), runs.load_model(args.run, "decoder", config)
    print(
        f"{args.run}: validation MSE as saved (EMA weights, BatchNorm statistics of the raw weights): "
        f"{reconstruction_mse(encoder, decoder, validation):.5f} on {len(validation)} images"
    )
    for count in args.batches:
        encoder, decoder = runs.load_model(args.run, "encoder", config), runs.load_model(args.run, "decoder", config)
        began = time.perf_counter()
        model = SimpleNamespace(encoder=encoder, decoder=decoder, variational=config["model"] == "vae")
        vae.recompute_batch_norm(model, pool[:count], args.seed)
        seconds = time.perf_counter() - began
        print(
            f"  statistics recomputed over {count} training batches of 64 ({seconds:.1f} s): "
            f"{reconstruction_mse(encoder, decoder, validation):.5f}"
        )
    ended = os.times()
    print(f"CPU time: {(ended.user + ended.system) - (started.user + started.system):.0f} s")


if __name__ == "__main__":
    main()
