"""Train a convolutional VAE (or autoencoder baseline) on CelebA.

    python train.py --data ./celeba --latent 128
    python train.py --resume runs/<name>            # continue a stopped or killed run
    python train.py --help                          # every flag, with its default

Each run writes to its folder (default runs/<timestamp>):
    config.json                 every setting, so generate.py / export_onnx.py rebuild the model
    encoder.keras, decoder.keras  the latest models (EMA weights when --ema is on), float32
    checkpoint/epoch_NNN.weights.h5  full training state (weights, optimizer moments and
                                step, EMA, sampler state), written atomically every epoch
    history.csv, loss_curves.png  train and validation losses per epoch
    reconstructions/epoch_NNN.png validation originals (odd rows) over reconstructions
    samples/epoch_NNN.png       decoded prior samples from fixed noise
    .lock                       held by the training that runs in the folder

The command line, its checks and the run folder's (lock, new or resumable, no debris) are
train_cli.py's, which has no TensorFlow: `--help` and a bad flag answer at once. A full disk
stops the run with the space a checkpoint needs, keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import gc
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import train_cli

if __name__ == "__main__":
    # `python train.py ...`: train_cli checks the command line and the run folder first and then
    # imports this file as the module `train` to train, so --help and a bad flag answer at once,
    # without waiting for TensorFlow below.
    sys.exit(train_cli.main())

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TensorFlow's C++ start-up chatter

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import data  # noqa: E402
import latent  # noqa: E402
import vae  # noqa: E402
from images import make_grid, save_png  # noqa: E402
from runs import KerasBackend, RunFolderError, write_text_atomic  # noqa: E402
from train_cli import CHECKPOINT_DIR, NO_SPACE, RunError, latest_checkpoint, remove_temporary_files  # noqa: E402

log = logging.getLogger("train")

GRID_COLUMNS = 8
HDF5_OVERHEAD = 256 * 1024  # bytes a checkpoint takes beyond its variables: 120-140 KB measured
main = train_cli.main  # train.main(argv): the command line, as `python train.py` runs it


# --------------------------------------------------------------------------- run folder
def choose_strategy(name: str) -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        # Mirror over the GPUs; without any, over the logical CPU devices (several only when
        # configured with tf.config.set_logical_device_configuration, as the tests do).
        devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise RunError("--strategy multiworker needs the TF_CONFIG environment variable (see README: multi-node)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


@contextlib.contextmanager
def ema_weights(model: keras.Model) -> Iterator[None]:
    """Temporarily put the optimizer's EMA weights into the model (no-op without EMA)."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if not getattr(optimizer, "use_ema", False) or not optimizer.built:
        yield
        return
    trained = model.trainable_variables
    raw = [variable.numpy() for variable in trained]
    optimizer.finalize_variable_values(trained)
    try:
        yield
    finally:
        for variable, value in zip(trained, raw, strict=True):
            variable.assign(value)


# --------------------------------------------------------------------------- callbacks
class EMAForValidation(keras.callbacks.Callback):
    """Validate with the EMA weights, the ones that get saved."""

    def __init__(self):
        super().__init__()
        self.stack = contextlib.ExitStack()

    def on_test_begin(self, logs=None):
        self.stack.enter_context(ema_weights(self.model))

    def on_test_end(self, logs=None):
        self.stack.close()


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop at the first NaN/inf batch loss and remember where it happened."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.failed_at: tuple[int, int] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            self.failed_at = (self.epoch + 1, batch + 1)
            self.model.stop_training = True


def epoch_is_finite(logs: dict | None) -> bool:
    return all(math.isfinite(float(value)) for value in (logs or {}).values())


class SaveArtifacts(keras.callbacks.Callback):
    """Per epoch: float32 encoder/decoder .keras files and the two PNG grids, with EMA weights."""

    def __init__(self, config: dict, preview_images: np.ndarray, run_dir: Path):
        super().__init__()
        self.config = config
        self.run_dir = run_dir
        self.preview_images = preview_images
        noise_rng = np.random.default_rng(config["seed"])
        self.prior_noise = noise_rng.standard_normal((2 * GRID_COLUMNS, config["latent_dim"])).astype(np.float32)

    def on_epoch_end(self, epoch, logs=None):
        if not epoch_is_finite(logs):
            return
        with ema_weights(self.model), vae.dtype_policy("float32"):
            exported = vae.model_from_config(self.config)
            exported.encoder.set_weights(self.model.encoder.get_weights())
            exported.decoder.set_weights(self.model.decoder.get_weights())
        for part in ("encoder", "decoder"):
            final = self.run_dir / f"{part}.keras"
            partial = self.run_dir / f".{part}.partial.keras"
            getattr(exported, part).save(partial)
            os.replace(partial, final)
        mu, _ = exported.encoder(self.preview_images, training=False)
        reconstructions = exported.decoder(mu, training=False).numpy()
        samples = exported.decoder(self.prior_noise, training=False).numpy()
        rows = []
        for start in range(0, len(self.preview_images), GRID_COLUMNS):
            rows += [self.preview_images[start : start + GRID_COLUMNS], reconstructions[start : start + GRID_COLUMNS]]
        name = f"epoch_{epoch + 1:03d}.png"
        save_png(make_grid(rows), self.run_dir / "reconstructions" / name)
        save_png(make_grid(samples.reshape(2, GRID_COLUMNS, *samples.shape[1:])), self.run_dir / "samples" / name)


class History(keras.callbacks.Callback):
    """history.csv (rewritten atomically each epoch) and loss_curves.png."""

    def __init__(self, run_dir: Path, initial_epoch: int):
        super().__init__()
        self.csv_path = run_dir / "history.csv"
        self.plot_path = run_dir / "loss_curves.png"
        self.rows = read_history(self.csv_path)[:initial_epoch] if initial_epoch else []

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}}
        self.rows.append(row)
        columns = list(dict.fromkeys(key for r in self.rows for key in r))
        lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in self.rows]
        write_text_atomic(self.csv_path, "\n".join(lines) + "\n")
        plot_history(self.rows, self.plot_path)


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
            for row in csv.DictReader(handle)
        ]


def plot_history(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from images import atomic_write

    panels = [("loss", "total loss"), ("reconstruction", "reconstruction"), ("kl", "KL"), ("mse", "per-pixel MSE")]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    epochs = [r["epoch"] for r in rows]
    for axis, (key, title) in zip(axes, panels, strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = [r.get(prefix + key, float("nan")) for r in rows]
            axis.plot(epochs, values, marker="o", markersize=3, label=label)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    with atomic_write(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)


class Checkpoint(keras.callbacks.Callback):
    """Full training state every epoch, atomically: written to a temporary file, renamed into
    checkpoint/epoch_NNN.weights.h5, and only then are older checkpoints removed."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.folder = run_dir / CHECKPOINT_DIR

    def on_epoch_end(self, epoch, logs=None):
        if not epoch_is_finite(logs):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"epoch_{epoch + 1:03d}.weights.h5"
        partial = self.folder / ".partial.weights.h5"
        # HDF5 copes badly with a disk that fills up mid-write: refuse before writing instead.
        if disk_is_full(self.model, self.folder.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial))
        self.model.save_weights(partial)
        os.replace(partial, final)
        for older in self.folder.glob("epoch_*.weights.h5"):
            if older != final:
                older.unlink()


# --------------------------------------------------------------------------- training
def load_splits(config: dict) -> tuple[list[Path], list[Path], str]:
    dataset = data.find_dataset(config["data"])
    train_files = [path for split in config.get("train_split", "train").split("+") for path in dataset.split(split)]
    if config["limit"]:
        train_files = train_files[: config["limit"]]
    validation_files = dataset.split("validation")
    if not train_files or not validation_files:
        raise RunError(f"{dataset.describe()}: need at least one training and one validation image")
    return train_files, validation_files, dataset.describe()


def train(config: dict, resume: bool = False, verbose: int = 1) -> keras.callbacks.History:
    """Train (or continue) the run described by `config`, in a run folder train_cli has checked
    and locked; returns the Keras history."""
    run_dir = Path(config["run_dir"])
    checkpoint = latest_checkpoint(run_dir) if resume else None
    initial_epoch = checkpoint[0] if checkpoint else 0

    # The same seeds as an uninterrupted run: the data stream below skips the batches already
    # trained on, and the sampling noise's state comes back with the checkpoint.
    keras.utils.set_random_seed(config["seed"])
    train_files, validation_files, description = load_splits(config)
    print(f"data: {description}; training on {len(train_files)} images")
    if config["cache"] == "memory":
        data.check_memory_cache(len(train_files) + len(validation_files), config["image_size"], config["channels"])
    image_args = {
        "image_size": config["image_size"],
        "channels": config["channels"],
        "crop": config["crop"],
        "cache": config["cache"],
    }
    batch_size = config["batch_size"]
    # Repeated datasets with explicit step counts: Keras knows each epoch's length from the
    # first epoch on (files dropped by ignore_errors would otherwise make it unknown).
    drop_remainder = len(train_files) >= batch_size
    train_steps = len(train_files) // batch_size if drop_remainder else 1
    train_data = data.make_dataset(
        train_files,
        batch_size=batch_size,
        shuffle=True,
        seed=config["seed"],
        drop_remainder=drop_remainder,
        repeat=True,
        skip_batches=initial_epoch * train_steps,
        **image_args,
    )
    validation_data = data.make_dataset(validation_files, batch_size=batch_size, repeat=True, **image_args)
    validation_steps = math.ceil(len(validation_files) / batch_size)
    preview = next(
        iter(data.make_dataset(validation_files[: 2 * GRID_COLUMNS], batch_size=2 * GRID_COLUMNS, **image_args))
    ).numpy()

    strategy = choose_strategy(config["strategy"])
    # With several workers only the chief writes the run folder; the others write their
    # (identical) copies to a scratch folder, as the tf.distribute guides recommend.
    output_dir = run_dir if is_chief(strategy) else Path(tempfile.mkdtemp(prefix="vae-worker-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        output_dir / "config.json", json.dumps({k: v for k, v in config.items() if k != "run_dir"}, indent=2) + "\n"
    )
    policy = vae.mixed_precision_policy() if config["mixed_precision"] else "float32"
    with vae.dtype_policy(policy), strategy.scope():
        model = vae.model_from_config(config)
        model.compile(optimizer=vae.make_optimizer(config, train_steps))
        if checkpoint:
            model.optimizer.build(model.trainable_variables)
            load_checkpoint(model, checkpoint[1])
            print(
                f"resuming {run_dir} after epoch {initial_epoch} (optimizer step {int(model.optimizer.iterations.numpy())})"
            )
        guard = StopOnNonFiniteLoss()
        callbacks = [
            guard,
            EMAForValidation(),
            SaveArtifacts(config, preview, output_dir),
            History(output_dir, initial_epoch),
            Checkpoint(output_dir),
        ]
        disk_full = False
        try:
            history = model.fit(
                train_data,
                validation_data=validation_data,
                epochs=config["epochs"],
                initial_epoch=initial_epoch,
                steps_per_epoch=train_steps,
                validation_steps=validation_steps,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # the dataset shuffles itself, seeded
            )
        except (OSError, RuntimeError) as error:  # h5py raises either when the disk fills mid-write
            if getattr(error, "errno", None) not in NO_SPACE and not disk_is_full(model, output_dir):
                raise
            disk_full = True  # handled below, once the failed write's objects are released with `error`
        if disk_full:
            raise disk_full_error(model, output_dir)
    if guard.failed_at:
        kept = latest_checkpoint(run_dir)
        kept_text = (
            f"the last good checkpoint (epoch {kept[0]}) is kept in {kept[1].parent}"
            if kept
            else "no epoch finished, so no checkpoint was written"
        )
        raise RunError(
            f"loss became NaN/inf at epoch {guard.failed_at[0]}, step {guard.failed_at[1]}; {kept_text}; "
            "lower --lr or --beta, or try --recon gaussian, and start a new run"
        )
    if is_chief(strategy):
        fit_density(config, run_dir)
    print(
        f"done: {run_dir} (encoder.keras, decoder.keras, latent_density.json, history.csv, loss_curves.png, "
        "samples/, reconstructions/)"
    )
    return history


def load_checkpoint(model: keras.Model, path: Path) -> None:
    """Load a checkpoint into `model`, or raise RunError saying why it cannot be: a damaged file,
    or weights and optimizer state that do not fit the model config.json describes (Keras only
    warns about the optimizer's, then trains on without them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
            mismatch = next((str(w.message) for w in caught if issubclass(w.category, UserWarning)), None)
        except ValueError as error:
            mismatch = str(error)
        except Exception as error:  # h5py raises OSError (truncated, not HDF5) and others for damaged files
            reason = " ".join(str(error).split())[:160] or type(error).__name__
            raise RunError(
                f"checkpoint {path} is damaged ({reason}); put back a good copy, or start a new run with another --out"
            ) from None
    if mismatch:
        raise RunError(
            f"checkpoint {path} does not fit the model its config.json describes ({' '.join(mismatch.split())[:160]}); "
            "was config.json edited? Restore the settings the run was trained with"
        )


def variable_bytes(variables: list) -> int:
    return sum(math.prod(variable.shape) * np.dtype(variable.dtype).itemsize for variable in variables)


def checkpoint_bytes(model: keras.Model, folder: Path) -> int:
    """The size of a checkpoint: the newest one's, or before the first, the bytes of every model
    and optimizer variable and a margin for HDF5's own records."""
    newest = latest_checkpoint(folder.parent)
    if newest is not None:
        return newest[1].stat().st_size
    return variable_bytes(model.variables + model.optimizer.variables) + HDF5_OVERHEAD


def disk_is_full(model: keras.Model, run_dir: Path) -> bool:
    """True when the run folder's disk has less space left than a checkpoint takes."""
    return shutil.disk_usage(run_dir).free < checkpoint_bytes(model, run_dir / CHECKPOINT_DIR)


def disk_full_error(model: keras.Model, run_dir: Path) -> RunError:
    """The error for a write that found the disk full: the half-written files are removed (the
    last good checkpoint stays), and the message says how much space a checkpoint takes."""
    remove_temporary_files(run_dir)
    gc.collect()  # lets h5py close a file the failed write left open, now that its space is free
    kept = latest_checkpoint(run_dir)
    then = (
        f"then continue from the last good checkpoint (epoch {kept[0]}) with: python train.py --resume {run_dir}"
        if kept
        else f"then delete {run_dir} and start again (no epoch had finished)"
    )
    checkpoint = checkpoint_bytes(model, run_dir / CHECKPOINT_DIR)
    models = variable_bytes(model.encoder.weights + model.decoder.weights)
    return RunError(
        f"the disk is full in {run_dir}: a checkpoint takes {checkpoint / 1e6:.1f} MB and encoder.keras with "
        f"decoder.keras about {models / 1e6:.1f} MB; free that much space, {then}"
    )


def fit_density(config: dict, run_dir: Path) -> None:
    """latent_density.json for the final model: the density generate.py draws random faces from
    (latent.py). A failure here loses no training, so it is reported with the command to retry."""
    try:
        density = latent.fit_folder_density(
            KerasBackend(run_dir),
            data.find_dataset(config["data"]),
            latent.fitting_splits(config)[0],
            limit=config["limit"],
            seed=config["seed"],
            log=print,
        )
        path = latent.write_density(density, run_dir)
    except (latent.DensityError, RunFolderError, data.DataError) as error:
        print(f"warning: no latent density was fitted ({error}); retry with: python latent.py --run {run_dir}")
        return
    print(f"wrote {path}: {density.components} Gaussian component(s), chosen on the validation images")
