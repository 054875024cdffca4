"""Decoder latency with onnxruntime vs Keras, and generate.py's wall time per backend.

    python export_onnx.py --run runs/<name>            # first: writes decoder.onnx
    python bench/onnx_latency.py --run runs/<name>
    python bench/onnx_latency.py --run runs/<name> --threads 2 --jit

Measured in one process on one machine, in this order so that only one TensorFlow process
runs at a time: the wall time of `generate.py --mode sample` with --backend keras and
--backend onnx (subprocesses, alternating, one warm-up run each), then the decoder's latency
at batch 1 and 64 with onnxruntime, with the Keras model called directly, with a tf.function
(XLA off; --jit adds XLA on) and with model.predict. Each figure is the median over repeats
after warm-up calls; the backends are measured in alternating rounds so that a change in the
machine's load hits all of them. Inputs are numpy arrays and outputs come back as numpy
arrays, as an app sees them. Prints the machine, the versions, a table and the ratios
against the targets. Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import machine_lines  # noqa: E402

import inference  # noqa: E402  (numpy and onnxruntime only)
from runs import keras_file, onnx_file  # noqa: E402

BATCHES = (1, 64)
TARGETS = {  # name: (description, minimum ratio)
    "batch1": ("batch 1: tf.function / onnxruntime", 2.0),
    "batch64": ("batch 64: tf.function / onnxruntime", 1.0),
    "generate": ("generate.py --mode sample: keras / onnx wall time", 3.0),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the exported decoder against Keras and generate.py's two backends.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--run", required=True, help="run folder with decoder.keras and decoder.onnx")
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads for onnxruntime and TensorFlow (0: their defaults)"
    )
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per backend at batch 1")
    parser.add_argument("--repeats-64", type=int, default=20, help="timed calls per backend at batch 64")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per backend and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds the repeats are split into")
    parser.add_argument("--jit", action="store_true", help="also time a tf.function with XLA (jit_compile=True)")
    parser.add_argument("--generate-repeats", type=int, default=3, help="timed generate.py runs per backend")
    parser.add_argument("--skip-generate", action="store_true", help="do not time generate.py")
    args = parser.parse_args(argv)
    for name in ("repeats", "repeats_64", "rounds", "generate_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads < 0 or args.warmup < 0:
        parser.error("--threads and --warmup must not be negative")
    return args


def time_rounds(functions: dict[str, Callable], repeats: int, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in alternating rounds after warm-up calls."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    per_round = [repeats // rounds + (1 if index < repeats % rounds else 0) for index in range(rounds)]
    for count in per_round:
        for name, function in functions.items():
            for _ in range(warmup):
                function()
            for _ in range(count):
                start = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - start)
    return times


def generate_times(run: Path, repeats: int, threads: int) -> dict[str, list[float]] | str:
    """Wall seconds of generate.py --mode sample per backend, or why they could not be measured."""
    script = REPO / "generate.py"
    if not script.is_file():
        return "generate.py is not in the repository yet; skipped"
    if "--backend" not in script.read_text():
        return "generate.py has no --backend option; skipped"
    times: dict[str, list[float]] = {"keras": [], "onnx": []}
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory() as folder:
        for index in range(repeats + 1):  # the first run of each backend warms the file cache
            for backend in times:
                command = [sys.executable, str(script), "--run", str(run), "--mode", "sample", "--backend", backend]
                command += ["--out", str(Path(folder) / f"{backend}.png")]
                if threads and backend == "onnx":
                    command += ["--threads", str(threads)]
                start = time.perf_counter()
                result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
                elapsed = time.perf_counter() - start
                if result.returncode != 0:
                    last = (result.stderr.strip().splitlines() or ["no message"])[-1]
                    return f"generate.py --backend {backend} failed (exit {result.returncode}): {last}"
                if index > 0:
                    times[backend].append(elapsed)
    return times


def decoder_functions(run: Path, threads: int, jit: bool) -> tuple[dict[int, dict[str, Callable]], float]:
    """For each batch size, name -> a call that decodes numpy z to numpy images; and the largest
    |onnxruntime - Keras| seen on those inputs."""
    session = inference.make_session(run / onnx_file("decoder"), threads=threads)
    metadata = inference.check_model(session, "decoder", name=str(run / onnx_file("decoder")))
    latent = int(metadata["latent_dim"])

    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    import keras

    decoder = keras.saving.load_model(run / keras_file("decoder"), safe_mode=True)
    signature = [tf.TensorSpec([None, latent], tf.float32)]
    compiled = tf.function(lambda z: decoder(z, training=False), input_signature=signature, jit_compile=False)
    xla = tf.function(lambda z: decoder(z, training=False), input_signature=signature, jit_compile=True)
    functions, difference = {}, 0.0
    for batch in BATCHES:
        z = np.random.default_rng(batch).standard_normal((batch, latent)).astype(np.float32)
        functions[batch] = {
            "onnxruntime": lambda z=z: inference.decode(session, z),
            "keras: decoder(z)": lambda z=z: np.asarray(decoder(z, training=False)),
            "keras: tf.function": lambda z=z: compiled(z).numpy(),
            "keras: model.predict": lambda z=z: decoder.predict(z, batch_size=len(z), verbose=0),
        }
        if jit:
            functions[batch]["keras: tf.function, XLA"] = lambda z=z: xla(z).numpy()
        reference = functions[batch]["keras: decoder(z)"]()
        difference = max(difference, float(np.abs(functions[batch]["onnxruntime"]() - reference).max()))
    return functions, difference


# --------------------------------------------------------------------------- report
def verdict(name: str, ratio: float | None) -> str:
    description, minimum = TARGETS[name]
    if ratio is None:
        return f"  {description}: not measured (target >= {minimum:g}x)"
    return f"  {description} = {ratio:.2f}x (target >= {minimum:g}x): {'met' if ratio >= minimum else 'MISSED'}"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run = Path(args.run).resolve()
    for name, hint in (
        (keras_file("decoder"), "train it with train.py"),
        (onnx_file("decoder"), "python export_onnx.py --run RUN"),
    ):
        if not (run / name).is_file():
            sys.exit(f"error: {run} has no {name}; {hint.replace('RUN', args.run)}")
    print("\n".join([*machine_lines(), f"intra-op threads: {args.threads or 'library defaults'}"]))

    generated = "skipped (--skip-generate)" if args.skip_generate else None
    if generated is None:
        print(f"timing generate.py --mode sample, {args.generate_repeats} runs per backend ...", flush=True)
        generated = generate_times(run, args.generate_repeats, args.threads)

    print("timing the decoder ...", flush=True)
    try:
        functions, difference = decoder_functions(run, args.threads, args.jit)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    medians: dict[str, dict[int, float]] = {}
    minimums: dict[str, dict[int, float]] = {}
    for batch, repeats in zip(BATCHES, (args.repeats, args.repeats_64), strict=True):
        for name, seconds in time_rounds(functions[batch], repeats, args.warmup, args.rounds).items():
            medians.setdefault(name, {})[batch] = statistics.median(seconds) * 1e3
            minimums.setdefault(name, {})[batch] = min(seconds) * 1e3

    print(
        f"\ndecoder latency in ms: median (min) over {args.repeats} calls at batch 1 and {args.repeats_64} at batch 64"
    )
    print(f"  {'backend':<26}" + "".join(f"{'batch ' + str(b):>20}" for b in BATCHES))
    for name in medians:
        cells = "".join(f"{f'{medians[name][b]:.2f} ({minimums[name][b]:.2f})':>20}" for b in BATCHES)
        print(f"  {name:<26}{cells}")
    print(f"  max |onnxruntime - Keras| on these inputs: {difference:.2g}")

    if isinstance(generated, dict):
        wall = {backend: statistics.median(seconds) for backend, seconds in generated.items()}
        print(
            f"\ngenerate.py --mode sample wall time in s: median over {args.generate_repeats} runs after a warm-up run"
        )
        for backend, seconds in wall.items():
            print(f"  --backend {backend:<6} {seconds:8.2f}   (min {min(generated[backend]):.2f})")
        generate_ratio = wall["keras"] / wall["onnx"]
    else:
        print(f"\ngenerate.py --mode sample: {generated}")
        generate_ratio = None

    onnx, compiled = medians["onnxruntime"], medians["keras: tf.function"]
    print("\ntargets (ratios of medians from this run)")
    print(verdict("batch1", compiled[1] / onnx[1]))
    print(verdict("batch64", compiled[64] / onnx[64]))
    print(verdict("generate", generate_ratio))


if __name__ == "__main__":
    main()
