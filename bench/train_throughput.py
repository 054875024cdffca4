"""Steady-state training throughput of train.py's model and train_step: images per second and per CPU-second.

    python bench/train_throughput.py                      # float32 / mixed precision, XLA off / on
    python bench/train_throughput.py --steps 40 --repeats 5

Uses the default architecture (64x64 RGB, filters 32,64,128,256, latent 128, batch 64) built by
vae.model_from_config and compiled as train.py compiles it. Images come from an in-memory
cached tf.data pipeline so only the training step is timed; the first epoch (tracing,
compilation) is excluded and the best of several timed epochs is reported, with the median.
Images per CPU-second divide the images of all timed epochs by the CPU time the process spent
in them (os.times() user + sys, all threads): unlike wall-clock rates, they stay comparable when
the CPUs are throttled or shared with other processes. Last, the rate at which the latent density
fit at the end of a run encodes images (the float32 encoder at train.DENSITY_BATCH).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per setting")
    parser.add_argument("--latent", type=int, default=128, help="latent dimension")
    parser.add_argument("--image-size", type=int, default=64, help="image side")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and a bad flag answer before TensorFlow loads (seconds)

from runs import import_keras  # noqa: E402

keras = import_keras()  # TensorFlow's start-up lines once, without the cuInit noise of a CPU machine

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from machine import machine_lines  # noqa: E402

import vae  # noqa: E402
from train import DENSITY_BATCH, posterior_means  # noqa: E402


def default_config(latent_dim: int, image_size: int) -> dict:
    """train.py's default recipe at the given sizes, before its discriminator phase (the run's last --adversarial-start steps)."""
    return {**vae.DEFAULT_RECIPE, "latent_dim": latent_dim, "image_size": image_size, "adversarial": 0.0}


def measure(config: dict, policy: str, jit_compile: bool, steps: int, repeats: int) -> tuple[float, float, float]:
    """(best, median) images/second over `repeats` timed epochs of `steps` steps, and images per
    CPU-second over all of them."""
    keras.utils.set_random_seed(0)
    batch = config["batch_size"]
    size, channels = config["image_size"], config["channels"]
    images = np.random.default_rng(0).random((batch * 8, size, size, channels), dtype=np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch, drop_remainder=True).cache().repeat().prefetch(2)
    with vae.dtype_policy(policy):
        model = vae.model_from_config(config)
        model.compile(optimizer=vae.make_optimizer(config), jit_compile=jit_compile)
        model.fit(dataset, steps_per_epoch=max(3, steps // 4), epochs=1, verbose=0, shuffle=False)  # trace / compile
        rates = []
        cpu_start = time.process_time()
        for _ in range(repeats):
            start = time.perf_counter()
            model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            rates.append(steps * batch / (time.perf_counter() - start))
        per_cpu_second = repeats * steps * batch / (time.process_time() - cpu_start)
    return max(rates), statistics.median(rates), per_cpu_second


def encoding_rate(config: dict, batches: int) -> float:
    """Images per CPU-second of the latent density fit's encoding, over `batches` batches."""
    means = posterior_means(vae.model_from_config(config).encoder, config)
    size, channels = config["image_size"], config["channels"]
    images = tf.constant(np.random.default_rng(0).random((DENSITY_BATCH, size, size, channels), dtype=np.float32))
    means(images)  # traced
    cpu_start = time.process_time()
    for _ in range(batches):
        means(images).numpy()
    return batches * DENSITY_BATCH / (time.process_time() - cpu_start)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = default_config(args.latent, args.image_size)
    mixed = vae.choose_precision("on", vae.cpu_flags(), vae.gpu_capability())[0]  # this machine's mixed policy
    model = vae.model_from_config(config)
    parameters = model.encoder.count_params() + model.decoder.count_params()
    print("\n".join(machine_lines()))
    print(
        f"model: {parameters:,} parameters, {config['image_size']}px, filters {config['filters']}, latent {config['latent_dim']}, batch {config['batch_size']}"
    )
    print(f"{'policy':16s} {'XLA':4s} {'best img/s':>11s} {'median':>8s} {'img/CPU-s':>10s}")
    for policy in ("float32", mixed):
        for jit_compile in (False, True):
            best, median, per_cpu_second = measure(config, policy, jit_compile, args.steps, args.repeats)
            xla = "on" if jit_compile else "off"
            print(f"{policy:16s} {xla:4s} {best:11.1f} {median:8.1f} {per_cpu_second:10.1f}", flush=True)
    rate = encoding_rate(config, args.steps)
    print(f"latent density fit, encoding (float32, batch {DENSITY_BATCH}): {rate:.1f} images per CPU-second")


if __name__ == "__main__":
    main()
