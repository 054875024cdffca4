"""Train a convolutional VAE (or autoencoder baseline) on CelebA.

    python train.py --data ./celeba --latent 128
    python train.py --resume runs/<name>            # continue a stopped or killed run
    python train.py --help                          # every flag, with its default

train() tells the story: settings (train_cli.py, recipe.py), data, model (vae.py), fit, latent
density (latent.py). recovery.py keeps a run alive (checkpoints, resuming, step backups, stop
signals, faults), cluster.py starts the tf.distribute strategy, epoch_log.py writes history.csv
and the timings.
A run folder holds config.json, encoder.keras and decoder.keras (float32, EMA weights),
checkpoint/, history.csv, loss_curves.png, reconstructions/, samples/, tensorboard/ and
latent_density.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import train_cli
from errors import run_main
from runs import native_start_up_lines_filtered

if __name__ == "__main__":
    # --help and a bad flag answer before TensorFlow loads; main() checks the command line again.
    run_main(lambda: train_cli.checked_config(sys.argv[1:]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ log: warnings and errors only

with native_start_up_lines_filtered():
    import keras
    import numpy as np
    import tensorflow as tf

import cluster  # noqa: E402
import data  # noqa: E402
import latent  # noqa: E402
import runs  # noqa: E402
import vae  # noqa: E402
from epoch_log import EpochTimes, History  # noqa: E402
from images import make_grid, save_image  # noqa: E402
from recipe import training_splits  # noqa: E402
from recovery import Checkpoint, Recovery, epoch_is_finite  # noqa: E402
from train_cli import NO_SPACE, RunError, TrainingStopped  # noqa: E402

GRID_COLUMNS = 8
DENSITY_BATCH = 256  # images per encoder call when fitting the latent density
CALIBRATION_BATCHES = 25  # training batches BatchNorm's statistics are recomputed over for the EMA weights


# --------------------------------------------------------------------------- data
@dataclasses.dataclass
class Inputs:
    """What the model trains and validates on, and how many batches a pass over each holds."""

    train_files: list[Path]
    validation_files: list[Path]
    cache: str  # this process's --cache
    train_steps: int
    validation_steps: int
    decoded: tf.data.Dataset  # the decoded training images, cached: every pass over them reads them from there
    readable: list[Path]  # the training files decoded, in order
    train_data: Callable[[int], tf.data.Dataset]  # batches to skip -> the endless training stream
    validation_data: tf.data.Dataset
    preview: np.ndarray  # the validation images of the reconstruction grids
    calibration: Calibration  # for the EMA weights' BatchNorm statistics


def load_splits(config: dict) -> tuple[list[Path], list[Path], data.Dataset]:
    """The run's training and validation files, and the data set they were found in."""
    dataset = data.find_dataset(config["data"])
    train_files = [path for split in training_splits(config) for path in dataset.split(split)]
    if config["limit"]:
        train_files = train_files[: config["limit"]]
    validation_files = dataset.split("validation")
    if not train_files or not validation_files:
        remedy = (
            "add images: a plain folder is split 80/10/10 by a hash of each file name"
            if dataset.partition is None
            else "the partition file puts none of the images found into "
            f"{'training' if not train_files else 'validation'}; check that the images are all there"
        )
        raise RunError(f"{dataset.describe()}: need at least one training and one validation image; {remedy}")
    return train_files, validation_files, dataset


def build_inputs(config: dict, worker: cluster.Worker) -> Inputs:
    """The training and validation streams, once the data are found and known to fit in memory."""
    train_files, validation_files, dataset = load_splits(config)
    print(f"data: {dataset.describe()}; training on {len(train_files)} images")
    replicas, batch_size, cache = worker.strategy.num_replicas_in_sync, config["batch_size"], worker.cache
    # Repeated datasets with explicit step counts: Keras knows each epoch's length from the
    # first epoch on (files dropped by ignore_errors would otherwise make it unknown).
    drop_remainder = len(train_files) >= batch_size
    train_steps, validation_steps = data.steps_per_pass(
        train_files, validation_files, batch_size, replicas, drop_remainder
    )
    size, channels, crop = config["image_size"], config["channels"], config["crop"]
    if cache == "memory":
        data.check_memory_cache(len(train_files) + len(validation_files), size, channels)
    elif cache != "none":
        data.check_file_cache(cache, [train_files, validation_files], size, channels, crop)
    train_cli.check_memory(config, len(train_files), len(validation_files))
    image_args = {"image_size": size, "channels": channels, "crop": crop, "cache": cache, "batch_size": batch_size}
    decoded, readable = data.decoded_images(train_files, size, channels, crop, cache)

    def train_data(skip_batches: int) -> tf.data.Dataset:
        return data.batched(
            decoded, len(readable), batch_size, shuffle=True, seed=config["seed"], drop_remainder=drop_remainder,
            repeat=True, skip_batches=skip_batches, flip=config["flip"], replicas=replicas,
        )  # fmt: skip

    validation = data.make_dataset(validation_files, repeat=True, replicas=replicas, **image_args)
    preview_files = validation_files[: 2 * GRID_COLUMNS]  # read once: not cached
    preview = data.make_dataset(preview_files, **{**image_args, "cache": "none", "batch_size": 2 * GRID_COLUMNS})
    return Inputs(
        train_files, validation_files, cache, train_steps, validation_steps, decoded, readable, train_data,
        validation, next(iter(preview)).numpy(),
        Calibration(calibration_batches(config, readable, image_args) if config["ema"] else [], config["seed"]),
    )  # fmt: skip


def calibration_batches(config: dict, train_files: list[Path], image_args: dict) -> list[np.ndarray]:
    """CALIBRATION_BATCHES batches of a seeded choice of training images, the same on every worker and resume."""
    count = min(len(train_files), CALIBRATION_BATCHES * config["batch_size"])
    chosen = np.sort(np.random.default_rng(config["seed"]).choice(len(train_files), count, replace=False))
    files = [train_files[index] for index in chosen]
    return [batch.numpy() for batch in data.make_dataset(files, **{**image_args, "cache": "none"})]


@dataclasses.dataclass
class Calibration:
    """Training batches the EMA weights' BatchNorm statistics are recomputed over, and the statistics found
    at the last optimizer step they were: validation and the saved models at an epoch's end share them."""

    batches: list[np.ndarray]
    seed: int
    step: int = -1
    statistics: list[np.ndarray] = dataclasses.field(default_factory=list)

    def apply(self, model: keras.Model) -> None:
        step = int(model.optimizer.iterations.numpy())
        if step != self.step:
            vae.recompute_batch_norm(model, self.batches, self.seed)
            self.step, self.statistics = step, [variable.numpy() for variable in model.non_trainable_variables]
            return
        for variable, value in zip(model.non_trainable_variables, self.statistics, strict=True):
            variable.assign(value)


# --------------------------------------------------------------------------- training
def train(
    config: dict, resume: bool, verbose: int, backup_every: int, tensorboard: bool, worker_timeout: float
) -> None:
    """Train (or continue) the run `config` describes, in a run folder train_cli has checked and locked."""
    run_dir = Path(config["run_dir"])
    # First: MultiWorkerMirroredStrategy must configure collective ops before TensorFlow runs any
    # op (reading a step backup runs some).
    worker = cluster.start(config, worker_timeout)
    recovery = Recovery(config, resume, backup_every)
    # The same seeds as an uninterrupted run: the data stream skips the batches already trained
    # on, and the sampling noise's state comes back with the checkpoint.
    keras.utils.set_random_seed(config["seed"])
    inputs = build_inputs(config, worker)
    phase, phase_note = resolved_discriminator_phase(config, inputs.train_steps)
    config.update(phase)
    print(f"run folder: {run_dir} ({config['epochs']} epochs of {inputs.train_steps} steps{phase_note})", flush=True)
    warn_if_shorter_than_the_warm_up(config, inputs.train_steps)
    policy, reason = vae.run_precision(config)
    config.update(mixed_precision=policy, mixed_precision_reason=reason)  # config.json is written below
    print(f"precision: {policy} ({reason})")
    chief = worker.chief
    with worker.output_folder(run_dir) as output_dir, vae.dtype_policy(policy), worker.strategy.scope():
        model = vae.model_from_config(config)
        model.compile(optimizer=vae.make_optimizer(config, inputs.train_steps))
        # Built now, on the variables the train step updates, so that saved and restored
        # optimizer states always have the same variables.
        model.optimizer.build(model.trained_variables())
        recovery.restore(model, inputs.train_steps)
        # Only now: a resume refused for a damaged checkpoint or an edited config leaves config.json as it was.
        config_text = json.dumps({k: v for k, v in config.items() if k != "run_dir"}, indent=2)
        runs.write_text_atomic(output_dir / runs.CONFIG_FILE, config_text + "\n")
        summary_dir = output_dir / runs.TENSORBOARD_DIR if tensorboard and chief else None  # only the chief logs
        history = History(output_dir, recovery.start.epoch)
        validation_images = inputs.validation_steps * config["batch_size"]
        timer = EpochTimes(history, config, verbose, density_images(config, inputs) if chief else 0, validation_images)
        callbacks = [
            EMAForValidation(inputs.calibration),
            SaveArtifacts(config, inputs, output_dir, summary_dir / "grids" if summary_dir else None),
            history,
            Checkpoint(output_dir),
            *([keras.callbacks.TensorBoard(summary_dir, write_graph=False)] if summary_dir else []),
            # Keras' own progress bar, so that it ends its line before EpochTimes prints.
            *([keras.callbacks.ProgbarLogger()] if verbose else []),
            timer,
        ]
        with recovery.guard(model, output_dir, inputs, timer):
            for skip_batches, epochs in recovery.fits():
                model.fit(
                    inputs.train_data(skip_batches),
                    validation_data=inputs.validation_data,
                    validation_steps=inputs.validation_steps,
                    callbacks=[*callbacks, *recovery.callbacks],
                    verbose=verbose,
                    shuffle=False,  # the dataset shuffles itself, seeded
                    **epochs,
                )
    if not chief:
        print(f"done: this worker's share of {run_dir}, which the chief worker writes")
        return
    fit_density(run_dir, inputs, config)
    print(
        f"done: {run_dir} (encoder.keras, decoder.keras, latent_density.json, history.csv, loss_curves.png, "
        f"samples/, reconstructions/{', tensorboard/' if tensorboard else ''})"
    )


def resolved_discriminator_phase(config: dict, steps_per_epoch: int) -> tuple[dict, str]:
    """(This run's discriminator settings, what the start-up line says of them): a negative --adversarial-start
    counts back from the run's end; a phase longer than half the run is dropped, so that a short trial run
    trains its encoder throughout."""
    weight, start, steps = config["adversarial"], config["adversarial_start"], config["epochs"] * steps_per_epoch
    if weight and start < 0 and steps + start < steps / 2:
        return {"adversarial": 0.0, "adversarial_start": 0}, (
            f"; no discriminator phase: its {-start} steps would be more than half the run"
        )
    start = steps + start if start < 0 else start
    note = f"; the decoder alone against a discriminator from step {start}" if weight else ""
    return {"adversarial_start": start}, note


def warn_if_shorter_than_the_warm_up(config: dict, steps_per_epoch: int) -> None:
    """A run shorter than its learning-rate warm-up barely trains: its samples are noise."""
    steps, warm_up = config["epochs"] * steps_per_epoch, config["lr_warmup_steps"]
    if steps < warm_up:
        print(
            f"warning: this run trains {steps} optimizer steps, fewer than the {warm_up} of the learning-rate "
            "warm-up (--lr-warmup): the model will barely learn and its samples will look like noise; train "
            "longer (--epochs, more images) or give a shorter --lr-warmup"
        )


# --------------------------------------------------------------------------- callbacks
@contextlib.contextmanager
def ema_weights(model: keras.Model, calibration: Calibration | None = None) -> Iterator[None]:
    """Temporarily put the optimizer's EMA weights into the model, with BatchNorm statistics
    recomputed for them when a `calibration` is given (no-op without EMA)."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if not getattr(optimizer, "use_ema", False) or not optimizer.built:
        yield
        return
    swapped = model.trainable_variables + (model.non_trainable_variables if calibration is not None else [])
    raw = [variable.numpy() for variable in swapped]
    optimizer.finalize_variable_values(model.trainable_variables)
    if calibration is not None:
        calibration.apply(model)
    try:
        yield
    finally:
        for variable, value in zip(swapped, raw, strict=True):
            variable.assign(value)


class EMAForValidation(keras.callbacks.Callback):
    """Validate with the EMA weights and their BatchNorm statistics, as they get saved."""

    def __init__(self, calibration: Calibration):
        super().__init__()
        self.calibration = calibration
        self.stack = contextlib.ExitStack()

    def on_test_begin(self, logs=None):
        self.stack.enter_context(ema_weights(self.model, self.calibration))

    def on_test_end(self, logs=None):
        self.stack.close()


class SaveArtifacts(keras.callbacks.Callback):
    """Per epoch, with the EMA weights: float32 encoder/decoder .keras files and the two PNG grids
    (also to TensorBoard when `summary_dir` is given)."""

    def __init__(self, config: dict, inputs: Inputs, run_dir: Path, summary_dir: Path | None = None):
        super().__init__()
        self.config, self.run_dir, self.summary_dir = config, run_dir, summary_dir
        self.preview_images, self.calibration = inputs.preview, inputs.calibration
        self.writer: tf.summary.SummaryWriter | None = None
        noise_rng = np.random.default_rng(config["seed"])
        self.prior_noise = noise_rng.standard_normal((2 * GRID_COLUMNS, config["latent_dim"])).astype(np.float32)
        self.exported: vae.VAE | None = None  # built once: building a model takes longer than saving it

    def on_epoch_end(self, epoch, logs=None):
        if not epoch_is_finite(logs):
            return
        with ema_weights(self.model, self.calibration), vae.dtype_policy("float32"):
            exported = self.exported = self.exported or vae.model_from_config(self.config)
            exported.encoder.set_weights(self.model.encoder.get_weights())
            exported.decoder.set_weights(self.model.decoder.get_weights())
        for part in ("encoder", "decoder"):
            partial = self.run_dir / f".{part}.partial.keras"
            getattr(exported, part).save(partial)
            os.replace(partial, self.run_dir / runs.keras_file(part))
        mu, _ = exported.encoder(self.preview_images, training=False)
        reconstructions = exported.decoder(mu, training=False).numpy()
        samples = exported.decoder(self.prior_noise, training=False).numpy()
        rows = [  # originals over their reconstructions
            images[start : start + GRID_COLUMNS]
            for start in range(0, len(reconstructions), GRID_COLUMNS)
            for images in (self.preview_images, reconstructions)
        ]
        grids = {
            runs.RECONSTRUCTIONS_DIR: make_grid(rows),
            runs.SAMPLES_DIR: make_grid(samples.reshape(2, GRID_COLUMNS, *samples.shape[1:])),
        }
        for folder, grid in grids.items():
            save_image(grid, self.run_dir / folder / f"epoch_{epoch + 1:03d}.png")
        if self.summary_dir:
            self.writer = self.writer or tf.summary.create_file_writer(str(self.summary_dir))
            with self.writer.as_default():
                for name, grid in grids.items():  # step = epoch index, as keras.callbacks.TensorBoard's
                    tf.summary.image(name, np.asarray(grid)[None], step=epoch)
            self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer:
            self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------- latent density
def density_images(config: dict, inputs: Inputs) -> int:
    """How many images the latent density's fit encodes."""
    training = min(train_split_count(config, inputs), latent.MAX_FIT_IMAGES)
    return training + min(len(inputs.validation_files), latent.MAX_FIT_IMAGES)


def train_split_count(config: dict, inputs: Inputs) -> int:
    """How many of the decoded training images, the first ones, are of the train split (k is chosen on its
    images when the validation images are trained on too)."""
    if "validation" not in training_splits(config):
        return len(inputs.readable)
    validation = set(inputs.validation_files)
    return sum(path not in validation for path in inputs.readable)


def fit_density(run_dir: Path, inputs: Inputs, config: dict) -> None:
    """latent_density.json for the final model, from the posterior means of the training images and of
    the validation images, read from training's caches. A failure here loses no training: it is reported
    with the command to retry."""
    splits = training_splits(config)
    try:
        means = posterior_means(runs.load_model(run_dir, "encoder", config), config)
        progress = runs.Progress(density_images(config, inputs), "latent density: encoded")
        started = time.process_time()
        count = train_split_count(config, inputs)
        passes = [
            (data.batched(inputs.decoded.take(count), count, DENSITY_BATCH), count),
            (inputs.validation_data.take(inputs.validation_steps), len(inputs.validation_files)),
        ]
        fit_means, heldout = (encode(means, stream, count, config["seed"], progress) for stream, count in passes)
        progress.close()
        rate = (len(fit_means) + len(heldout)) / max(time.process_time() - started, 1e-9)
        print(f"latent density: {rate:.0f} images encoded per CPU-second")
        density = latent.select_density(
            fit_means,
            heldout,
            seed=config["seed"],
            refit_points=np.concatenate([fit_means, heldout]) if "validation" in splits else None,
            progress=print,
        )
        latent.describe_fit(density, splits, len(fit_means) + len(heldout) * ("validation" in splits), run_dir.name)
        path = latent.write_density(density, run_dir)
    except (latent.DensityError, runs.RunFolderError, data.DataError) as error:
        print(f"warning: no latent density was fitted ({error}); retry with: python latent.py --run {run_dir}")
        return
    print(f"wrote {path}: {density.components} Gaussian component(s), chosen on the validation images")


def posterior_means(encoder: keras.Model, config: dict) -> Callable[[tf.Tensor], tf.Tensor]:
    """The encoder's posterior means of a batch of images, traced once for any batch size."""
    shape = (None, config["image_size"], config["image_size"], config["channels"])
    return tf.function(lambda images: encoder(images, training=False)[0], input_signature=[tf.TensorSpec(shape)])


def encode(means: Callable, stream: tf.data.Dataset, count: int, seed: int, progress: runs.Progress) -> np.ndarray:
    """The posterior means [N, D] of `stream`'s images (of a seeded subset of latent.MAX_FIT_IMAGES
    when its `count` is larger)."""
    images = stream.unbatch()
    if count > latent.MAX_FIT_IMAGES:
        keep = np.zeros(count, bool)
        keep[np.random.default_rng(seed).choice(count, latent.MAX_FIT_IMAGES, replace=False)] = True
        kept = tf.constant(keep)
        images = images.enumerate().filter(lambda index, _: kept[index]).map(lambda _, image: image)
    parts = []
    for batch in images.batch(DENSITY_BATCH).prefetch(tf.data.AUTOTUNE):
        parts.append(means(batch).numpy())
        progress.add(len(parts[-1]))
    return np.concatenate(parts)


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> None:
    """`python train.py ...`: a problem is one line `error: ...`, exit status 1."""
    run_main(lambda: train_command(argv))


def train_command(argv: Sequence[str] | None = None) -> None:
    """Check the command line and the run folder, then train there; a stop by SIGTERM or Ctrl-C
    ends with a line that says how to go on and the signal's status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # tf.train.CheckpointManager logs each save
    args, config = train_cli.checked_config(argv)
    # Keras' progress bar rewrites its line with escape codes: one line per epoch in log files.
    verbose = 2 if args.verbose == 1 and not sys.stdout.isatty() else args.verbose
    run_dir, resume = Path(config["run_dir"]), bool(args.resume)
    writes = train_cli.writes_run_folder(config)
    try:
        with train_cli.locked_run_folder(run_dir, config, resume) if writes else contextlib.nullcontext():
            train_cli.check_cache_folder(config["cache"])
            train(config, resume, verbose, args.backup_every, args.tensorboard, args.worker_start_timeout)
    except (runs.RunFolderError, data.DataError) as error:  # the user errors of runs.py and data.py
        raise RunError(str(error)) from None
    except TrainingStopped as stopped:
        # On a line of its own, also after a progress bar that Keras rewrites in place on a terminal.
        print(f"{chr(10) if sys.stdout.isatty() else ''}{stopped}", file=sys.stderr)
        if config["strategy"] == "multiworker":
            cluster.quiet_native_log()  # our line stays the last one
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before training began or after it ended: nothing to back up
        print("stopped by Ctrl-C outside the training steps (nothing to back up)", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except OSError as error:  # a full disk outside the checkpoints train() handles itself
        if error.errno not in NO_SPACE:
            raise
        raise RunError(
            f"the disk is full ({error.filename or error}); free some space, then run the same command again"
        ) from None


if __name__ == "__main__":
    main()
