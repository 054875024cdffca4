"""tf.distribute: one training step on 2 logical CPU devices equals the single-device step.

Logical devices must be configured before TensorFlow initialises its devices, which the
pytest process has already done, so the comparison runs in a fresh subprocess (this file,
run as a script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains models end to end

REPO = Path(__file__).resolve().parents[1]


def run_worker(mode: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, __file__, mode], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_mirrored_step_equals_single_device_step():
    reports = run_worker("compare")
    for report in reports.values():
        assert report["replicas"] == 2
        assert abs(report["single_loss"] - report["mirrored_loss"]) <= 1e-4 * abs(report["single_loss"])
        assert report["max_weight_change"] > 1e-4  # the step really moved the weights
    assert reports["mse"]["max_weight_difference"] < 1e-5
    # The calibrated variance is the whole batch's: with each replica's own the two were 5e-4 of the change apart.
    assert reports["gaussian"]["max_weight_difference"] < 2e-5 * reports["gaussian"]["max_weight_change"]


def test_train_py_runs_with_the_mirrored_strategy():
    report = run_worker("train")
    assert report["replicas"] == 2 and report["epochs"] == 1
    assert "the decoder alone against a discriminator from step 5" in report["output"]  # of 10
    # 3 validation images in one batch of 4: cut to 2, one image for each replica; the start-up line
    # says what is left out (training drops its short last batch of 3)
    assert report["validation_images"] == 3 and report["finite_figures"]
    assert "left out per epoch: 3 of the 43 training images and 1 of the 3 validation images" in report["output"]
    assert report["odd_batch_error"].startswith("--batch-size 7 must be a multiple of the 2 replicas")
    assert report["single_image_error"] == (
        "the 1 readable training image(s) cannot be shared by the 2 replicas; use at least 2 images"
    )


def compare(mirrored, reconstruction: str, count: int, learning_rate: float) -> dict:
    """One step on the default strategy and on `mirrored`, which is made once per process: a second
    MirroredStrategy numbers its collective operations anew, clashing with the first's."""
    import keras
    import numpy as np
    import tensorflow as tf

    import vae

    config = {
        "image_size": 16, "channels": 3, "latent_dim": 8, "filters": [8, 16], "hidden_units": 16,
        "upsampling": "nearest", "reconstruction": reconstruction, "beta": 1.0, "beta_warmup_steps": 0,
        "beta_cycle_steps": 0, "model": "vae", "seed": 0, "learning_rate": 1e-2, "ema": 0.0, "output_filters": 0,
        "adversarial": 0.0,  # whose adaptive weight each replica takes from its own gradients
    }  # fmt: skip
    images = np.random.default_rng(0).random((count, 16, 16, 3), dtype=np.float32)

    def one_step(strategy: tf.distribute.Strategy, initial: list | None) -> tuple[float, list]:
        with strategy.scope():
            model = vae.model_from_config(config)
            if initial is not None:
                model.set_weights(initial)
            # Plain SGD: Adam's first step is invariant to the gradient's scale and would hide
            # a wrong per-replica loss scaling.
            model.compile(optimizer=keras.optimizers.SGD(learning_rate))
        start = [w.copy() for w in model.get_weights()]
        dataset = tf.data.Dataset.from_tensor_slices(images).batch(count)
        history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        return history.history["loss"][0], start, model.get_weights()

    single_loss, initial, single_weights = one_step(tf.distribute.get_strategy(), None)
    mirrored_loss, _, mirrored_weights = one_step(mirrored, initial)
    return {
        "replicas": mirrored.num_replicas_in_sync,
        "single_loss": float(single_loss),
        "mirrored_loss": float(mirrored_loss),
        "max_weight_difference": max(
            float(np.abs(a - b).max()) for a, b in zip(single_weights, mirrored_weights, strict=True)
        ),
        "max_weight_change": max(float(np.abs(a - b).max()) for a, b in zip(single_weights, initial, strict=True)),
    }


def train_run() -> dict:
    import contextlib
    import io
    import math
    import tempfile

    import numpy as np
    from PIL import Image

    import cluster
    import epoch_log
    import runs
    import train
    import train_cli

    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for index in range(51):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
    run = folder / "run"
    args = ["--data", str(folder), "--out", str(run), "--image-size", "16", "--filters", "8,16", "--hidden", "16",
            "--latent", "8", "--batch-size", "4", "--epochs", "1", "--strategy", "mirrored", "--verbose", "0",
            "--adversarial-start", "-5"]  # fmt: skip
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        train.train_command(args)
    # The run has a discriminator phase (its last 5 steps, within its one epoch); the next ones,
    # refused, are without: a second MirroredStrategy in one process numbers its collective operations
    # anew, and those of a second adversarial step then clash with the first's (train.py makes one).
    plain, errors = [*args, "--adversarial", "0"], {}
    for name, extra in (("odd", ["--batch-size", "7"]), ("single", ["--limit", "1"])):  # the later flags win
        try:
            train.train_command([*plain, *extra, "--out", str(folder / name)])
        except train_cli.RunError as error:
            errors[name] = str(error)
    rows = epoch_log.read_history(run / "history.csv")
    return {
        "replicas": cluster.choose_strategy("mirrored").num_replicas_in_sync,
        "epochs": len(rows),
        "validation_images": len(train.load_splits(runs.read_config(run))[1]),
        "finite_figures": all(math.isfinite(value) for row in rows for value in row.values()),
        "output": output.getvalue(),
        "odd_batch_error": errors.get("odd", ""),
        "single_image_error": errors.get("single", ""),
    }


if __name__ == "__main__":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    if sys.argv[1] == "compare":  # gaussian: a 4-image batch, 2 images a replica; its gradients are larger
        import cluster

        mirrored = cluster.choose_strategy("mirrored")
        reports = {"mse": compare(mirrored, "mse", 8, 0.1), "gaussian": compare(mirrored, "gaussian", 4, 1e-4)}
        print(json.dumps(reports))
    else:
        print(json.dumps(train_run()))


def test_only_the_chief_writes_the_run_folder_and_each_worker_has_its_own_file_cache(monkeypatch):
    import cluster
    import train_cli

    workers, with_chief = {"worker": ["host0:1", "host1:1"]}, {"chief": ["host0:1"], "worker": ["host1:1"]}

    def chief_and_cache(strategy: str, cluster_jobs: dict | None = None, kind: str = "", index: int = 0):
        if cluster_jobs:
            monkeypatch.setenv(
                "TF_CONFIG", json.dumps({"cluster": cluster_jobs, "task": {"type": kind, "index": index}})
            )
        config = {"strategy": strategy, "cache": "cache"}
        return train_cli.writes_run_folder(config), cluster.worker_cache(config)

    assert chief_and_cache("none") == chief_and_cache("mirrored") == (True, "cache")
    assert chief_and_cache("multiworker", workers, "worker", 0) == (True, str(Path("cache/worker0")))
    assert chief_and_cache("multiworker", workers, "worker", 1) == (False, str(Path("cache/worker1")))
    assert chief_and_cache("multiworker", with_chief, "chief", 0) == (True, str(Path("cache/chief0")))
    assert chief_and_cache("multiworker", with_chief, "worker", 0) == (False, str(Path("cache/worker0")))
