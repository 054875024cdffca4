"""What keeps a training run alive: resuming, step backups, stop signals and the faults of a fit.

train.train() makes a Recovery, which restores where a resumed run goes on, and fits inside its guard(),
which turns what stops a fit into one line that says how to go on:
- SIGTERM or Ctrl-C finishes the current step on every worker, backs it up and stops (status 143, 130)
  with the command that continues the run; a second one stops at once.
- A checkpoint after each epoch (Checkpoint) and a step backup every --backup-every steps
  (checkpoint/backup/); a resumed run goes on from the newer of the two.
- A full disk, a lost worker and a NaN/inf loss stop the run, keeping the last good checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import math
import os
import re
import shlex
import shutil
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import h5py
import keras
import numpy as np
import tensorflow as tf

import data
import vae
from errors import first_line, not_a_script
from runs import BACKUP_DIR, CHECKPOINT_DIR
from train_cli import NO_SPACE, RunError, TrainingStopped, has_backup, latest_checkpoint, remove_temporary_files

SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}  # the signals that stop training after a step
HDF5_OVERHEAD = 256 * 1024  # bytes a checkpoint takes beyond its variables (HDF5's own records), with a margin


@dataclasses.dataclass
class StartPoint:
    """Where training starts: epochs done, steps into the next, and what to restore them from."""

    epoch: int = 0
    step: int = 0
    checkpoint: tuple[int, Path] | None = None
    backup: tuple[int, int, str] | None = None


class Recovery:
    """Resuming the run in config["run_dir"], and the guard around its fits."""

    def __init__(self, config: dict, resume: bool, backup_every: int):
        self.config, self.backup_every, self.run_dir = config, backup_every, Path(config["run_dir"])
        self.start = start_point(self.run_dir, config["epochs"]) if resume else StartPoint()
        self.epoch_metrics: list[np.ndarray] | None = None  # a resumed epoch's running means

    def restore(self, model: keras.Model, train_steps: int) -> None:
        """Load the state training starts from into `model`."""
        start, run_dir = self.start, self.run_dir
        if start.backup:
            state = training_state(model, tf.Variable([0, 0], dtype=tf.int64))
            state.save_counter  # noqa: B018 - created, so that the saved counter is consumed too
            try:
                state.read(start.backup[2]).assert_consumed()
            except (tf.errors.OpError, ValueError, AssertionError) as error:
                raise RunError(
                    f"the step backup {start.backup[2]} does not fit this run's model ({first_line(error)}); "
                    f"delete {run_dir / CHECKPOINT_DIR / BACKUP_DIR} to resume from the last epoch checkpoint"
                ) from None
            self.epoch_metrics = [variable.numpy() for variable in model.metrics_variables]
            where = f"in epoch {start.epoch + 1} after step {start.step} of {train_steps}"
            source = f", from {CHECKPOINT_DIR}/{BACKUP_DIR}"
        elif start.checkpoint:
            load_checkpoint(model, start.checkpoint[1])
            where, source = f"after epoch {start.epoch}", ""
        else:
            return
        print(f"resuming {run_dir} {where} (optimizer step {int(model.optimizer.iterations.numpy())}{source})")

    @contextlib.contextmanager
    def guard(self, model: keras.Model, output_dir: Path, inputs, timer) -> Iterator[None]:
        """Around the fits: handles SIGTERM and Ctrl-C, gives their callbacks (last: they may end training) and
        turns what stops a fit into one line that says how to go on. inputs: train.Inputs; timer: EpochTimes."""
        self.model, self.output_dir, self.inputs, run_dir = model, output_dir, inputs, self.run_dir
        self.stop = StopRequest(run_dir)
        step_backup = StepBackup(self, output_dir, inputs.train_steps, timer)
        self.callbacks = [step_backup]
        with self.stop.installed():
            try:
                yield
            except TrainingStopped as error:
                resume = resume_command(run_dir)
                if self.config["strategy"] == "multiworker":
                    resume = f"{resume} --strategy multiworker on every worker, or {resume} alone"
                raise TrainingStopped(
                    f"{error}, state saved in {run_dir}; continue with: {resume}", error.signum
                ) from None
            except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
                # A worker that died or hangs: the coordination service aborts the others' collectives.
                reason = re.sub(r"\{\{.*?\}\}\s*", "", error.message.splitlines()[0]).rstrip(":")
                raise RunError(
                    f"lost another worker of the cluster ({reason}); {run_dir} keeps its last checkpoint: "
                    f"restart every worker with --resume {run_dir} --strategy multiworker, "
                    f"or go on alone with --resume {run_dir}"
                ) from None
            except (OSError, RuntimeError, tf.errors.OpError) as error:
                # A full disk: h5py raises OSError or RuntimeError, TensorFlow's checkpoint an OpError,
                # tf.data's file cache a ResourceExhaustedError.
                cache_full = fills_file_cache(error, inputs.cache)
                if not (cache_full or getattr(error, "errno", None) in NO_SPACE or disk_is_full(model, output_dir)):
                    raise
                # The failed fit's objects (cache files, h5py's file) let go of what the cleanup removes.
                traceback.clear_frames(error.__traceback__)
                if cache_full:
                    files = [inputs.train_files, inputs.validation_files]
                    raise file_cache_full_error(inputs.cache, files, self.config, run_dir) from None
                raise disk_full_error(model, output_dir) from None
            if step_backup.failed_at:
                raise non_finite_loss_error(step_backup.failed_at, run_dir)

    def fits(self) -> Iterator[tuple[int, dict]]:
        """(batches of the data stream to skip, model.fit's epoch arguments) of each fit: Keras
        fits whole epochs, so the rest of an interrupted epoch is a fit of its own."""
        steps, epoch, step = self.inputs.train_steps, self.start.epoch, self.start.step
        if step:
            yield epoch * steps + step, {"initial_epoch": epoch, "epochs": epoch + 1, "steps_per_epoch": steps - step}
            epoch += 1
            kept = latest_checkpoint(self.output_dir)
            if kept and kept[0] == epoch:  # the trained weights, not the EMA ones fit ended with
                load_checkpoint(self.model, kept[1])
        if epoch < self.config["epochs"] and not self.model.stop_training:  # set at a NaN/inf loss
            yield epoch * steps, {"initial_epoch": epoch, "epochs": self.config["epochs"], "steps_per_epoch": steps}


# --------------------------------------------------------------------------- where a run goes on
def training_state(model: keras.Model, position: tf.Variable) -> tf.train.Checkpoint:
    """What a step backup holds: an epoch checkpoint's state, the epoch's running metrics (so its
    history row averages the whole epoch) and the position [epochs done, steps into the next]."""
    return tf.train.Checkpoint(
        model=model.variables,  # weights, BatchNorm statistics, the sampler's noise state
        optimizer=model.optimizer_variables(),  # step, Adam moments, EMA weights; the discriminator's
        metrics=model.metrics_variables,
        position=position,
    )


def latest_backup(run_dir: Path) -> tuple[int, int, str] | None:
    """(epochs done, steps into the next, checkpoint prefix) of the step backup, or None."""
    folder = run_dir / CHECKPOINT_DIR / BACKUP_DIR
    prefix = tf.train.latest_checkpoint(str(folder))  # None without the folder or its index
    if prefix is None:
        return None
    position = tf.Variable([0, 0], dtype=tf.int64)
    try:
        tf.train.Checkpoint(position=position).read(prefix).expect_partial()
    except (tf.errors.OpError, ValueError) as error:
        raise RunError(
            f"the step backup {prefix} cannot be read ({first_line(error)}); "
            f"delete {folder} to resume from the last epoch checkpoint"
        ) from None
    epochs_done, steps = (int(value) for value in position.numpy())
    return epochs_done, steps, prefix


def start_point(run_dir: Path, epochs: int) -> StartPoint:
    """Where a resumed run goes on: the newer of its epoch checkpoint and its step backup."""
    checkpoint, backup = latest_checkpoint(run_dir), latest_backup(run_dir)
    if backup and checkpoint and backup[0] < checkpoint[0]:
        backup = None  # the epoch checkpoint is newer
    start = StartPoint(*backup[:2], checkpoint, backup) if backup else StartPoint(checkpoint[0], 0, checkpoint)
    if start.epoch >= epochs:  # train_cli checked the epoch checkpoint; a backup may be further
        raise RunError(f"{run_dir} has already trained {start.epoch} of {epochs} epochs; pass --epochs N to extend it")
    return start


def load_checkpoint(model: keras.Model, path: Path) -> None:
    """RunError for a damaged checkpoint, or one that does not fit the model (Keras only warns about the
    optimizer's state). One without the model's discriminator (--resume added it) loads through a plain VAE."""
    target = model
    if isinstance(model, vae.AdversarialVAE) and not holds_discriminator(path):
        target = vae.VAE(model.encoder, model.decoder, model.config)
        target.build((None, model.config.image_size, model.config.image_size, model.config.channels))
        target.compile(optimizer=model.optimizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            target.load_weights(path)
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
    if target is not model:
        model.sampling.seed_generator.state.assign(target.sampling.seed_generator.state)
        trained, start = int(model.optimizer.iterations.numpy()), model.config.adversarial_start
        if start < trained:
            raise RunError(
                f"--adversarial-start {start} lies inside the {trained} steps trained without a discriminator; "
                f"give --adversarial-start {trained} or more"
            )


def holds_discriminator(path: Path) -> bool:
    """Whether the epoch checkpoint at `path` holds a discriminator's weights."""
    with contextlib.suppress(OSError), h5py.File(path, "r") as weights:
        return "discriminator" in weights
    return True  # a damaged file: load_weights says so


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir`, with the Python that runs this one."""
    script = Path(__file__).absolute().with_name("train.py")
    with contextlib.suppress(ValueError):
        script = script.relative_to(Path.cwd())
    return shlex.join([sys.executable, str(script), "--resume", str(run_dir)])


# --------------------------------------------------------------------------- callbacks
class StepBackup(keras.callbacks.Callback):
    """The training state every `every` optimizer steps in checkpoint/backup/ (CheckpointManager renames each
    into place); after SIGTERM or Ctrl-C, a backup of the current step and TrainingStopped, on every worker
    after the same step; at a NaN/inf loss, a stop that keeps the last good backup (`failed_at`: where)."""

    def __init__(self, recovery: Recovery, run_dir: Path, steps: int, timer):
        super().__init__()
        self.run_dir, self.folder = run_dir, run_dir / CHECKPOINT_DIR / BACKUP_DIR
        self.every, self.epochs, self.steps_per_epoch = recovery.backup_every, recovery.config["epochs"], steps
        self.steps_done = recovery.start.epoch * steps + recovery.start.step  # optimizer steps since the run began
        self.stop, self.epoch_metrics, self.timer = recovery.stop, recovery.epoch_metrics, timer  # timer: EpochTimes
        self.manager: tf.train.CheckpointManager | None = None
        self.position = tf.Variable([0, 0], dtype=tf.int64)
        self.failed_at: tuple[int, int] | None = None  # (epoch, step) of a NaN/inf loss

    def on_epoch_begin(self, epoch, logs=None):
        # Keras has just reset the metrics; a resumed epoch continues the restored running means.
        if self.epoch_metrics is not None:
            for variable, value in zip(self.model.metrics_variables, self.epoch_metrics, strict=True):
                variable.assign(value)
            self.epoch_metrics = None

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done += 1
        if not math.isfinite(float((logs or {}).get("loss", 0.0))):
            epoch, step = divmod(self.steps_done - 1, self.steps_per_epoch)  # a resumed epoch's fit starts mid-epoch
            self.failed_at = (epoch + 1, step + 1)
            self.model.stop_training = True
        if self.model.stop_training or self.steps_done % self.steps_per_epoch == 0:
            return  # a NaN/inf loss keeps the last good backup; an epoch's end has its checkpoint
        signum = self.stopped_by()
        if signum:
            self.save()
            epoch, step = divmod(self.steps_done, self.steps_per_epoch)
            where = f"in epoch {epoch + 1} after step {step} of {self.steps_per_epoch}"
            raise TrainingStopped(f"stopped by {self.signal_name(signum)} {where}", signum)
        if self.every and self.steps_done % self.every == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        # Last among the callbacks: the epoch checkpoint is written. After the last epoch the run just finishes.
        signum = self.stopped_by() if epoch + 1 < self.epochs else None
        if signum:
            raise TrainingStopped(f"stopped by {self.signal_name(signum)} at the end of epoch {epoch + 1}", signum)

    def stopped_by(self) -> int | None:
        """The stop signal sent here or to another worker, or None: an all-reduce, which every worker calls alike."""
        here = self.stop.signum or 0
        if not vae.spans_several_workers():
            return here or None
        # The signal numbers summed: a single one (the usual case) is named in the message.
        anywhere = int(tf.distribute.get_strategy().reduce("SUM", tf.constant(here), axis=None))
        return here or anywhere or None

    def signal_name(self, signum: int) -> str:
        if signum == self.stop.signum:
            return SIGNAL_NAMES[signum]
        return f"{SIGNAL_NAMES.get(signum, 'a signal')} to another worker"

    def on_train_end(self, logs=None):
        kept = latest_checkpoint(self.run_dir)
        if kept and kept[0] * self.steps_per_epoch >= self.steps_done:  # not after a NaN loss
            shutil.rmtree(self.folder, ignore_errors=True)

    def save(self) -> None:
        refuse_if_disk_full(self.model, self.run_dir, self.folder)
        if self.manager is None:
            state = training_state(self.model, self.position)
            self.manager = tf.train.CheckpointManager(state, str(self.folder), max_to_keep=1)
        self.position.assign(divmod(self.steps_done, self.steps_per_epoch))
        with self.timer.backup():
            self.manager.save(checkpoint_number=self.steps_done)


def epoch_is_finite(logs: dict | None) -> bool:
    return all(np.isfinite(float(value)) for value in (logs or {}).values())


class Checkpoint(keras.callbacks.Callback):
    """Full training state every epoch, atomically: written to a temporary file, renamed into
    checkpoint/epoch_NNN.weights.h5, and only then are older checkpoints removed."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir, self.folder = run_dir, run_dir / CHECKPOINT_DIR

    def on_epoch_end(self, epoch, logs=None):
        if not epoch_is_finite(logs):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        final, partial = self.folder / f"epoch_{epoch + 1:03d}.weights.h5", self.folder / ".partial.weights.h5"
        refuse_if_disk_full(self.model, self.run_dir, partial)
        self.model.save_weights(partial)
        os.replace(partial, final)
        for older in self.folder.glob("epoch_*.weights.h5"):
            if older != final:
                older.unlink()


class StopRequest:
    """Set by the first SIGTERM or Ctrl-C (StepBackup backs up after the step and stops); a second ends the process."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.signum: int | None = None
        self.new_line = "\n" if sys.stdout.isatty() else ""  # off a terminal's progress bar

    def __call__(self, signum: int, frame: object) -> None:
        name, again = SIGNAL_NAMES[signum], self.signum is not None
        self.signum = self.signum or signum
        line = (
            f"stopped at once by a second {name}; {self.run_dir} keeps its last backup or checkpoint; "
            f"continue with: {resume_command(self.run_dir)}"
            if again
            else f"{name}: stopping after this step, once it is backed up ({name} again stops at once)"
        )
        # os.write: print is not reentrant, and this handler may interrupt one
        os.write(sys.stderr.fileno(), f"{self.new_line}{line}\n".encode())
        if again:
            os._exit(128 + signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle the signals while the block runs; after a stop request until the process ends (a second one acts)."""
        previous = {signum: signal.signal(signum, self) for signum in SIGNAL_NAMES}
        try:
            yield self
        finally:
            if self.signum is None:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)


# --------------------------------------------------------------------------- faults
def non_finite_loss_error(failed_at: tuple[int, int], run_dir: Path) -> RunError:
    kept = latest_checkpoint(run_dir)
    kept_text = "no epoch finished, so no checkpoint was written"
    if kept:
        kept_text = f"the last good checkpoint (epoch {kept[0]}) is kept in {kept[1].parent}"
    return RunError(
        f"loss became NaN/inf at epoch {failed_at[0]}, step {failed_at[1]}; {kept_text}; "
        "lower --lr or --beta, or try --recon gaussian, and start a new run"
    )


def variable_bytes(variables: list) -> int:
    return sum(math.prod(variable.shape) * np.dtype(variable.dtype).itemsize for variable in variables)


def checkpoint_bytes(model: keras.Model, run_dir: Path) -> int:
    """The size of a checkpoint: the newest one's, or the bytes of every model and optimizer variable."""
    newest = latest_checkpoint(run_dir)
    if newest is not None:
        return newest[1].stat().st_size
    return variable_bytes(model.variables + model.optimizer.variables) + HDF5_OVERHEAD


def disk_is_full(model: keras.Model, run_dir: Path) -> bool:
    """True when the run folder's disk has less space left than a checkpoint takes."""
    return shutil.disk_usage(run_dir).free < checkpoint_bytes(model, run_dir)


def refuse_if_disk_full(model: keras.Model, run_dir: Path, target: Path) -> None:
    """OSError ENOSPC for a checkpoint or backup that would not fit: a disk full mid-write breaks them."""
    if disk_is_full(model, run_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))


def disk_full_error(model: keras.Model, run_dir: Path) -> RunError:
    """The error for a write that found the disk full, once the half-written files are removed."""
    remove_temporary_files(run_dir)
    gc.collect()  # lets h5py close a file the failed write left open, now that its space is free
    checkpoint, models = checkpoint_bytes(model, run_dir), variable_bytes(model.encoder.weights + model.decoder.weights)
    return RunError(
        f"the disk is full in {run_dir}: a checkpoint takes {checkpoint / 1e6:.1f} MB and encoder.keras with "
        f"decoder.keras about {models / 1e6:.1f} MB; free that much space, {how_to_go_on(run_dir)}"
    )


def how_to_go_on(run_dir: Path) -> str:
    """How a run stopped by a full disk goes on: from what it saved last, or from the start."""
    kept = latest_checkpoint(run_dir)
    if kept:
        return f"then continue from the last good checkpoint (epoch {kept[0]}) with: {resume_command(run_dir)}"
    if has_backup(run_dir):
        return f"then continue from the last step backup with: {resume_command(run_dir)}"
    return f"then delete {run_dir} and start again (nothing had been saved yet)"


def fills_file_cache(error: BaseException, cache: str) -> bool:
    """Whether `error` is a write into the file cache folder `cache` that found its disk full."""
    if cache in ("memory", "none"):
        return False
    text = str(error)
    return str(Path(cache)) in text and any(os.strerror(code) in text for code in NO_SPACE)


def file_cache_full_error(cache: str, file_lists: list[list[Path]], config: dict, run_dir: Path) -> RunError:
    """The error for a file cache that filled its disk (others wrote there since), its unfinished files removed."""
    gc.collect()  # closes the cache files the failed iterator held
    settings = (config["image_size"], config["channels"], config["crop"])
    for files in file_lists:
        data.remove_partial_file_cache(data.file_cache_prefix(cache, files, *settings))
    needed, free = data.file_cache_needs(cache, file_lists, *settings)[1], data.free_disk_space(cache)
    return RunError(
        f"the disk of --cache {cache} filled up while the decoded images were cached there (the unfinished cache "
        f"files are removed): the cache needs about {data.size_text(needed)} and {data.size_text(free)} is free; "
        f"free space there or give another --cache folder, {how_to_go_on(run_dir)}"
    )


if __name__ == "__main__":
    not_a_script(__file__)
