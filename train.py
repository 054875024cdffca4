"""Train a convolutional VAE (or autoencoder baseline) on CelebA.

    python train.py --data ./celeba --latent 128
    python train.py --resume runs/<name>            # continue a stopped or killed run
    python train.py --help                          # every flag, with its default

train() tells the story: resolve the run (strategy, resume point), build the data (build_inputs),
build or restore the model, fit (callbacks: grids and models, history, checkpoint, step backups,
epoch timings), finish (latent density). The command line and the run folder's checks are
train_cli.py's and the settings with their defaults recipe.py's (no TensorFlow): they run
before TensorFlow loads. A run folder holds config.json,
encoder.keras and decoder.keras (float32, EMA weights), checkpoint/ (every epoch, atomically;
backup/ every --backup-every steps), history.csv, loss_curves.png, reconstructions/, samples/,
tensorboard/ and latent_density.json.

SIGTERM or Ctrl-C finishes the current step, backs it up and exits (143, 130) with the command
that continues the run; a second one stops at once. A full disk stops the run with the space it
needs, keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import gc
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import train_cli
from errors import batches, first_line, run_main
from runs import native_start_up_lines_filtered

if __name__ == "__main__":
    # The command line is checked before TensorFlow loads (seconds), so that --help and a bad flag
    # answer at once; main() checks it again (it takes no time) to train.
    run_main(lambda: train_cli.checked_config(sys.argv[1:]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ log: warnings and errors only


with native_start_up_lines_filtered():
    import keras
    import numpy as np
    import tensorflow as tf

# Not in TensorFlow's public API: the coordination service's start-up settings (multiworker_strategy).
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2  # noqa: E402
from tensorflow.python.distribute import multi_worker_util  # noqa: E402
from tensorflow.python.eager import context  # noqa: E402

import data  # noqa: E402
import latent  # noqa: E402
import vae  # noqa: E402
from images import make_grid, save_image  # noqa: E402
from recipe import DEFAULTS, training_splits  # noqa: E402
from runs import (  # noqa: E402
    BACKUP_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    LOSS_CURVES_FILE,
    RECONSTRUCTIONS_DIR,
    SAMPLES_DIR,
    TENSORBOARD_DIR,
    KerasBackend,
    RunFolderError,
    keras_file,
    write_text_atomic,
)
from train_cli import (  # noqa: E402
    NO_SPACE,
    RunError,
    TrainingStopped,
    has_backup,
    latest_checkpoint,
    remove_temporary_files,
)

GRID_COLUMNS = 8
TIMING_COLUMNS = ("seconds_steps", "seconds_validation", "seconds_artifacts", "images_per_cpu_second")  # history.csv
HDF5_OVERHEAD = 256 * 1024  # bytes a checkpoint takes beyond its variables: 120-140 KB measured
SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}  # the signals that stop training after a step
TASK_NAME = r"/job:(\w+)/replica:\d+/task:(\d+)"  # a task of a TensorFlow cluster, as its messages name it


# --------------------------------------------------------------------------- run folder
def training_state(model: keras.Model, position: tf.Variable) -> tf.train.Checkpoint:
    """What a step backup holds: an epoch checkpoint's state, the epoch's running metrics (so its
    history row averages the whole epoch) and the position [epochs done, steps into the next]."""
    return tf.train.Checkpoint(
        model=model.variables,  # weights, BatchNorm statistics, the sampler's noise state
        optimizer=model.optimizer_variables(),  # step, Adam moments, EMA weights; the discriminator's
        metrics=[variable for metric in model.metrics for variable in metric.variables],
        position=position,
    )


def latest_backup(run_dir: Path) -> tuple[int, int, str] | None:
    """(epochs done, steps into the next, checkpoint prefix) of the step backup, or None."""
    folder = run_dir / CHECKPOINT_DIR / BACKUP_DIR
    prefix = tf.train.latest_checkpoint(str(folder)) if folder.is_dir() else None
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


def choose_strategy(
    name: str, worker_start_timeout: float = DEFAULTS["worker_start_timeout"]
) -> tf.distribute.Strategy:
    # Multi-worker first: it must configure collective ops before anything (even listing the
    # devices) starts TensorFlow's runtime.
    if name == "multiworker":
        return multiworker_strategy(worker_start_timeout)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        # Mirror over the GPUs; without any, over the logical CPU devices (several only when
        # configured with tf.config.set_logical_device_configuration, as the tests do).
        devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def multiworker_strategy(start_timeout: float) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy over the cluster of TF_CONFIG, once all its tasks have started;
    RunError naming those missing if they have not within `start_timeout` seconds.

    The strategy configures TensorFlow's coordination service itself unless it already is, but
    then its tasks wait for one another without a time limit. So it is configured here as the
    strategy would, with a limit: every task registers at a barrier of the service (on the
    first worker, or the chief) that fails after `start_timeout`, naming the tasks it still
    lacks; a task that cannot reach the service at all gives up 5 s later."""
    cluster, kind, index = train_cli.read_tf_config()
    workers = sum(len(addresses) for addresses in cluster.values())
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    service = context.context()
    service.configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        cluster_register_timeout_in_ms=math.ceil(start_timeout * 1000),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker")
            if job in spec.jobs
        ],
    )
    service.coordination_service.cluster_register_with_barrier = True
    print(
        f"multiworker: {kind} {index} of {workers}, waiting up to {start_timeout:g} s until all of them have started",
        flush=True,
    )
    try:
        return started_strategy(resolver)
    except tf.errors.DeadlineExceededError as error:
        # The barrier's message lists the tasks it timed out on, one a line after "timed out task names:".
        listed = re.match(rf"(\s*{TASK_NAME})*", error.message.partition("timed out task names:")[2]).group()
    stragglers = dict.fromkeys(re.findall(TASK_NAME, listed))
    if stragglers:
        missing = ", ".join(f"{job} {index} ({spec.task_address(job, int(index))})" for job, index in stragglers)
        what = f"{missing} did not start"
    else:  # this task could not even reach the service's task
        job, index = re.search(TASK_NAME, multi_worker_util.coordination_leader(spec)).groups()
        what = f"{job} {index} ({spec.task_address(job, int(index))}) could not be reached (not started, or its port blocked)"
    # Raised here, once the failed start's objects have gone with `error`: the coordination agent logs
    # its error state again as they go, which then comes before this one-line error, not after it.
    gc.collect()
    raise RunError(
        f"{what} within --worker-start-timeout {start_timeout:g} s; start train.py on every worker of TF_CONFIG, "
        "each with its own task index, within that time of one another"
    )


def started_strategy(resolver: tf.distribute.cluster_resolver.ClusterResolver) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy, once every task of the cluster has registered."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    # The coordination service catches SIGTERM (for PreemptionCheckpointHandler, not used here),
    # which would then no longer end the process: give SIGTERM back its usual effect until
    # training installs its own handler.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def worker_cache(cache: str, strategy: tf.distribute.Strategy) -> str:
    """This process's --cache: a file cache gets a subfolder per worker of a multi-worker
    cluster, as two workers must not write one cache (on shared storage, or on one host)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if cache in ("memory", "none") or resolver is None or not resolver.task_type:
        return cache
    return str(Path(cache) / f"{resolver.task_type}{resolver.task_id}")


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
    """Per epoch: float32 encoder/decoder .keras files and the two PNG grids, with EMA weights;
    the grids also go to TensorBoard as images when `summary_dir` is given."""

    def __init__(self, config: dict, preview_images: np.ndarray, run_dir: Path, summary_dir: Path | None = None):
        super().__init__()
        self.config = config
        self.run_dir = run_dir
        self.preview_images = preview_images
        self.summary_dir = summary_dir
        self.writer: tf.summary.SummaryWriter | None = None
        noise_rng = np.random.default_rng(config["seed"])
        self.prior_noise = noise_rng.standard_normal((2 * GRID_COLUMNS, config["latent_dim"])).astype(np.float32)
        self.exported: vae.VAE | None = None  # built once: building a model takes longer than saving it

    def on_epoch_end(self, epoch, logs=None):
        if not epoch_is_finite(logs):
            return
        with ema_weights(self.model), vae.dtype_policy("float32"):
            exported = self.exported = self.exported or vae.model_from_config(self.config)
            exported.encoder.set_weights(self.model.encoder.get_weights())
            exported.decoder.set_weights(self.model.decoder.get_weights())
        for part in ("encoder", "decoder"):
            final = self.run_dir / keras_file(part)
            partial = self.run_dir / f".{part}.partial.keras"
            getattr(exported, part).save(partial)
            os.replace(partial, final)
        mu, _ = exported.encoder(self.preview_images, training=False)
        reconstructions = exported.decoder(mu, training=False).numpy()
        samples = exported.decoder(self.prior_noise, training=False).numpy()
        rows = []  # originals over their reconstructions, row by row
        for originals, reconstructed in zip(
            batches(self.preview_images, GRID_COLUMNS), batches(reconstructions, GRID_COLUMNS), strict=True
        ):
            rows += [originals, reconstructed]
        grids = {
            RECONSTRUCTIONS_DIR: make_grid(rows),
            SAMPLES_DIR: make_grid(samples.reshape(2, GRID_COLUMNS, *samples.shape[1:])),
        }
        for folder, grid in grids.items():
            save_image(grid, self.run_dir / folder / f"epoch_{epoch + 1:03d}.png")
        if self.summary_dir:
            self.writer = self.writer or tf.summary.create_file_writer(str(self.summary_dir))
            with self.writer.as_default():
                for name, grid in grids.items():
                    # step = epoch index, as keras.callbacks.TensorBoard uses for the epoch scalars
                    tf.summary.image(name, np.asarray(grid)[None], step=epoch)
            self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer:
            self.writer.close()
            self.writer = None


class History(keras.callbacks.Callback):
    """history.csv (rewritten atomically each epoch) and loss_curves.png. Written before the epoch
    checkpoint, so that a checkpoint always has its row; EpochTimes adds the epoch's timings after it."""

    def __init__(self, run_dir: Path, initial_epoch: int):
        super().__init__()
        self.csv_path = run_dir / HISTORY_FILE
        self.plot_path = run_dir / LOSS_CURVES_FILE
        self.rows = read_history(self.csv_path)[:initial_epoch] if initial_epoch else []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}})
        self.write()
        plot_history(self.rows, self.plot_path)

    def write(self) -> None:
        columns = list(dict.fromkeys(key for r in self.rows for key in r))
        lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in self.rows]
        write_text_atomic(self.csv_path, "\n".join(lines) + "\n")


def cpu_seconds() -> float:
    """CPU time of this process, all its threads (user + system)."""
    times = os.times()
    return times.user + times.system


class EpochTimes(keras.callbacks.Callback):
    """Where an epoch's time goes, added to its history.csv row (TIMING_COLUMNS) and, unless
    `verbose` is 0, logged: the training steps (their images per CPU-second too), validation,
    and the artifacts (step backups, then models, grids, history, checkpoint, TensorBoard). After
    those among the callbacks."""

    def __init__(self, history: History, batch_size: int, epochs: int, verbose: int):
        super().__init__()
        self.history = history
        self.batch_size = batch_size
        self.epochs = epochs
        self.verbose = verbose
        self.marks: dict[str, tuple[float, float]] = {}
        self.steps = 0
        self.backups = [0.0, 0.0]  # seconds and CPU-seconds in step backups

    def mark(self, name: str) -> None:
        self.marks[name] = (time.perf_counter(), cpu_seconds())

    def on_epoch_begin(self, epoch, logs=None):
        self.marks, self.steps, self.backups = {}, 0, [0.0, 0.0]
        self.mark("begin")

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_test_begin(self, logs=None):
        self.mark("validation")

    def on_test_end(self, logs=None):
        self.mark("artifacts")

    @contextlib.contextmanager
    def backup(self) -> Iterator[None]:
        """Time a step backup as an artifact rather than as training steps."""
        started, cpu = time.perf_counter(), cpu_seconds()
        yield
        self.backups[0] += time.perf_counter() - started
        self.backups[1] += cpu_seconds() - cpu

    def on_epoch_end(self, epoch, logs=None):
        self.mark("end")
        begin, end = self.marks["begin"], self.marks["end"]
        validation, artifacts = self.marks.get("validation", end), self.marks.get("artifacts", end)
        steps_cpu = validation[1] - begin[1] - self.backups[1]
        figures = {
            "seconds_steps": validation[0] - begin[0] - self.backups[0],
            "seconds_validation": artifacts[0] - validation[0],
            "seconds_artifacts": end[0] - artifacts[0] + self.backups[0],
            "images_per_cpu_second": self.steps * self.batch_size / steps_cpu if steps_cpu > 0 else float("nan"),
        }
        self.history.rows[-1].update({key: round(value, 3) for key, value in figures.items()})
        self.history.write()
        if self.verbose:
            total, left = end[0] - begin[0], self.epochs - epoch - 1
            print(
                f"epoch {epoch + 1}: {total:.1f} s: training steps {figures['seconds_steps']:.1f} s "
                f"({figures['images_per_cpu_second']:.0f} images per CPU-second), validation "
                f"{figures['seconds_validation']:.1f} s, artifacts {figures['seconds_artifacts']:.1f} s "
                f"({(total - figures['seconds_steps']) / total:.0%} of the epoch around the steps)"
                + (f"; about {duration_text(left * total)} to go for the {left} epoch(s) left" if left else ""),
                flush=True,
            )


def duration_text(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


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


class StepBackup(keras.callbacks.Callback):
    """The training state every `every` optimizer steps in checkpoint/backup/, so a killed run loses
    at most that many steps; when `stop` is set (SIGTERM, Ctrl-C) it backs up after the current step
    and ends training by raising TrainingStopped.

    keras.callbacks.BackupAndRestore does not fit: it overwrites its weights file in place (a kill
    during the write leaves no usable backup) and resumes at the start of the epoch, with the steps
    already trained in it done twice. tf.train.CheckpointManager writes each backup beside the
    previous one, then switches its `checkpoint` index file to it with an atomic rename and only
    then deletes the previous one, so a kill at any moment leaves a complete backup. The backup at
    an epoch's last step is left to the epoch checkpoint, written after validation; the folder is
    removed when training ends normally, as the final epoch checkpoint holds the same state.

    With several workers, writing a backup takes collective operations of all of them, so they
    must all write it after the same step: SIGTERM to any one worker stops them all, after the
    step where they learn of it by summing their stop flags (one tiny all-reduce per step).
    tf.distribute.experimental.PreemptionCheckpointHandler does the same through the
    coordination service, but it restores and saves a checkpoint of its own, and asks Google
    Cloud's metadata server whether it runs there, for up to 5 s on every start."""

    def __init__(
        self,
        run_dir: Path,
        every: int,
        epochs: int,
        steps_per_epoch: int,
        steps_done: int,
        stop: StopRequest,
        timer: EpochTimes,
        epoch_metrics: list[np.ndarray] | None = None,
    ):
        super().__init__()
        self.run_dir = run_dir
        self.folder = run_dir / CHECKPOINT_DIR / BACKUP_DIR
        self.every = every
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.steps_done = steps_done  # optimizer steps trained since the run began
        self.stop = stop
        self.timer = timer
        self.epoch_metrics = epoch_metrics  # running metrics of a resumed epoch, as restored
        self.manager: tf.train.CheckpointManager | None = None
        self.position: tf.Variable | None = None
        self.saved_at = -1

    def on_epoch_begin(self, epoch, logs=None):
        # Keras has just reset the metrics; a resumed epoch continues the restored running means.
        if self.epoch_metrics is not None:
            metric_variables = [variable for metric in self.model.metrics for variable in metric.variables]
            for variable, value in zip(metric_variables, self.epoch_metrics, strict=True):
                variable.assign(value)
            self.epoch_metrics = None

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done += 1
        if self.model.stop_training or self.steps_done % self.steps_per_epoch == 0:
            return  # a NaN/inf loss keeps the last good backup; an epoch's end has its checkpoint
        signum = self.stopped_by()
        if signum:
            self.save()
            epoch, step = divmod(self.steps_done, self.steps_per_epoch)
            raise TrainingStopped(
                f"stopped by {self.signal_name(signum)} in epoch {epoch + 1} after step {step} of "
                f"{self.steps_per_epoch}",
                signum,
            )
        if self.every and self.steps_done % self.every == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        # Last among the callbacks: the epoch checkpoint is written by now. After the last
        # epoch the run just finishes.
        if epoch + 1 < self.epochs:
            signum = self.stopped_by()
            if signum:
                raise TrainingStopped(f"stopped by {self.signal_name(signum)} at the end of epoch {epoch + 1}", signum)

    def stopped_by(self) -> int | None:
        """The signal (SIGTERM, SIGINT) that asks training to stop now, sent to this process or to
        another worker, or None. Every worker must call this at the same point, as it takes an
        all-reduce among them."""
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
        if self.saved_at == self.steps_done:
            return
        # As for the epoch checkpoints: refuse before writing rather than leave a half-written backup.
        if disk_is_full(self.model, self.run_dir):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.folder))
        if self.manager is None:
            self.position = tf.Variable([0, 0], dtype=tf.int64)
            self.manager = tf.train.CheckpointManager(
                training_state(self.model, self.position), str(self.folder), max_to_keep=1
            )
        self.position.assign(divmod(self.steps_done, self.steps_per_epoch))
        with self.timer.backup():
            self.manager.save(checkpoint_number=self.steps_done)
        self.saved_at = self.steps_done


class StopRequest:
    """Set by the first SIGTERM or Ctrl-C (SIGINT): StepBackup backs up after the current step and
    stops. A second one ends the process at once: the last backup or checkpoint stays, as both are
    written atomically."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.signum: int | None = None
        # Off the progress bar's line, where Keras rewrites it in place on a terminal.
        self.new_line = "\n" if sys.stdout.isatty() else ""

    def __call__(self, signum: int, frame: object) -> None:
        name = SIGNAL_NAMES[signum]
        if self.signum is not None:
            say(
                f"{self.new_line}stopped at once by a second {name}; {self.run_dir} keeps its last backup or checkpoint; "
                f"continue with: {resume_command(self.run_dir)}"
            )
            os._exit(128 + signum)
        self.signum = signum
        say(f"{self.new_line}{name}: stopping after this step, once it is backed up ({name} again stops at once)")

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle the signals while the block runs; once a stop was asked for, until the process
        ends, so that a second signal while it winds up still ends it at once."""
        previous = {signum: signal.signal(signum, self) for signum in SIGNAL_NAMES}
        try:
            yield self
        finally:
            if self.signum is None:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)


def say(line: str) -> None:
    """A line on stderr from a signal handler: os.write, as print may be in the middle of a write."""
    os.write(sys.stderr.fileno(), f"{line}\n".encode())


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir`, with the Python that runs this one."""
    script = Path(__file__).absolute()
    with contextlib.suppress(ValueError):
        script = script.relative_to(Path.cwd())
    return shlex.join([sys.executable, str(script), "--resume", str(run_dir)])


# --------------------------------------------------------------------------- training
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


def batches_per_pass(
    split: str, files: list[Path], batch_size: int, replicas: int, drop_remainder: bool
) -> tuple[int, int]:
    """(batches, images left out) of one pass over `files`: a short last batch is dropped with
    `drop_remainder`, else cut to a multiple of the replicas (even_batches). RunError when a pass
    would hold no batch at all."""
    count = len(files)
    if count < batch_size and replicas > 1:
        count = sum(map(data.is_readable_image, files))  # one short batch: count what it will hold
    full, rest = divmod(count, batch_size)
    kept = 0 if drop_remainder else rest // replicas * replicas
    if full == 0 and kept == 0:
        raise RunError(
            f"the {count} readable {split} image(s) cannot be shared by the {replicas} replicas; "
            f"use at least {replicas} images"
        )
    return full + (kept > 0), rest - kept


def even_batches(dataset: tf.data.Dataset, replicas: int) -> tf.data.Dataset:
    """Each batch cut to a multiple of `replicas`, the empty ones dropped: tf.distribute gives each
    replica ceil(n / replicas) of a batch of n, so a short last batch would leave a replica with no
    image (which crashes inside BatchNormalization on some CPUs) or with a smaller share than the
    others (the step's loss scaling assumes equal ones). Unchanged on a single device."""
    if replicas == 1:
        return dataset
    return dataset.map(lambda images: images[: tf.shape(images)[0] // replicas * replicas]).filter(
        lambda images: tf.shape(images)[0] > 0
    )


@dataclasses.dataclass
class Inputs:
    """What the model trains and validates on, and how many batches a pass over each holds."""

    dataset: data.Dataset  # where the files were found
    train_files: list[Path]
    validation_files: list[Path]
    cache: str  # this process's --cache
    train_steps: int
    validation_steps: int
    validation_data: tf.data.Dataset
    preview: np.ndarray  # the validation images of the reconstruction grids
    train_data: Callable[[int], tf.data.Dataset]  # the (endless) training stream from a batch on


@dataclasses.dataclass
class StartPoint:
    """Where training starts: epochs done, steps into the next, and what to restore them from."""

    epoch: int = 0
    step: int = 0
    checkpoint: tuple[int, Path] | None = None
    backup: tuple[int, int, str] | None = None


def train(
    config: dict,
    resume: bool = False,
    verbose: int = 1,
    backup_every: int = DEFAULTS["backup_every"],
    tensorboard: bool = True,
    worker_start_timeout: float = DEFAULTS["worker_start_timeout"],
) -> None:
    """Train (or continue) the run described by `config`, in a run folder train_cli has checked
    and locked."""
    run_dir = Path(config["run_dir"])
    # First: MultiWorkerMirroredStrategy must configure collective ops before TensorFlow runs any
    # op (reading a step backup runs some).
    strategy = start_strategy(config, worker_start_timeout)
    start = start_point(run_dir, config["epochs"]) if resume else StartPoint()
    # The same seeds as an uninterrupted run: the data stream skips the batches already trained
    # on, and the sampling noise's state comes back with the checkpoint.
    keras.utils.set_random_seed(config["seed"])
    inputs = build_inputs(config, strategy)
    print(f"run folder: {run_dir} ({config['epochs']} epochs of {inputs.train_steps} steps)", flush=True)
    warn_if_shorter_than_the_warm_up(config, inputs.train_steps)
    chief = is_chief(strategy)
    policy, reason = vae.run_precision(config)
    config.update(mixed_precision=policy, mixed_precision_reason=reason)  # config.json is written below
    print(f"precision: {policy} ({reason})")
    with (
        worker_output(run_dir, chief) as output_dir,
        vae.dtype_policy(policy),
        strategy.scope(),
        StopRequest(run_dir).installed() as stop,
    ):
        model = vae.model_from_config(config)
        model.compile(optimizer=vae.make_optimizer(config, inputs.train_steps))
        # Built now, on the variables the train step updates, so that saved and restored
        # optimizer states always have the same variables.
        model.optimizer.build(model.trained_variables())
        epoch_metrics = restore(model, run_dir, start, inputs.train_steps)
        # Only now: a resume refused for a damaged checkpoint or an edited config leaves config.json as it was.
        config_text = json.dumps({k: v for k, v in config.items() if k != "run_dir"}, indent=2)
        write_text_atomic(output_dir / CONFIG_FILE, config_text + "\n")
        summary_dir = output_dir / TENSORBOARD_DIR if tensorboard and chief else None  # only the chief logs
        callbacks = make_callbacks(
            config, inputs, output_dir, summary_dir, backup_every, start, stop, epoch_metrics, verbose
        )
        faults = TrainingFaults(run_dir, output_dir, config, inputs, model)
        with faults:
            fit(model, inputs, start, config["epochs"], callbacks, verbose, output_dir)
        faults.raise_disk_full()
    guard = callbacks[0]
    if guard.failed_at:
        raise non_finite_loss_error(guard.failed_at, run_dir)
    if not chief:
        print(f"done: this worker's share of {run_dir}, which the chief worker writes")
        return
    fit_density(run_dir, inputs.dataset, config)
    print(
        f"done: {run_dir} (encoder.keras, decoder.keras, latent_density.json, history.csv, loss_curves.png, "
        f"samples/, reconstructions/{', tensorboard/' if tensorboard else ''})"
    )


def make_callbacks(
    config: dict,
    inputs: Inputs,
    output_dir: Path,
    summary_dir: Path | None,
    backup_every: int,
    start: StartPoint,
    stop: StopRequest,
    epoch_metrics: list[np.ndarray] | None,
    verbose: int,
) -> list[keras.callbacks.Callback]:
    """The callbacks of a fit, in the order they run; the first is the StopOnNonFiniteLoss guard."""
    history = History(output_dir, start.epoch)
    timer = EpochTimes(history, config["batch_size"], config["epochs"], verbose)
    return [
        StopOnNonFiniteLoss(),
        EMAForValidation(),
        SaveArtifacts(config, inputs.preview, output_dir, summary_dir / "grids" if summary_dir else None),
        history,
        Checkpoint(output_dir),
        *([keras.callbacks.TensorBoard(summary_dir, write_graph=False)] if summary_dir else []),
        timer,
        # Last: it may end training.
        StepBackup(
            output_dir,
            backup_every,
            config["epochs"],
            inputs.train_steps,
            start.epoch * inputs.train_steps + start.step,
            stop,
            timer,
            epoch_metrics,
        ),
    ]


def start_strategy(config: dict, worker_start_timeout: float) -> tf.distribute.Strategy:
    """The run's tf.distribute strategy, once its replicas are known to share the batch evenly."""
    if config["strategy"] == "multiworker":  # its messages while it waits for the others go out as they come
        strategy = multiworker_strategy(worker_start_timeout)
    else:
        with native_start_up_lines_filtered():  # the first look at the devices: CUDA's start-up lines
            strategy = choose_strategy(config["strategy"])
            tf.config.list_logical_devices()  # (--strategy none has not looked yet)
    replicas = strategy.num_replicas_in_sync
    if config["batch_size"] % replicas:
        raise RunError(
            f"--batch-size {config['batch_size']} must be a multiple of the {replicas} replicas, "
            "each of which trains on an equal share of the global batch"
        )
    return strategy


def start_point(run_dir: Path, epochs: int) -> StartPoint:
    """Where a resumed run goes on: the newer of its epoch checkpoint and its step backup."""
    checkpoint, backup = latest_checkpoint(run_dir), latest_backup(run_dir)
    if backup and checkpoint and backup[0] < checkpoint[0]:
        backup = None  # the epoch checkpoint is newer
    start = StartPoint(*backup[:2], checkpoint, backup) if backup else StartPoint(checkpoint[0], 0, checkpoint)
    if start.epoch >= epochs:  # train_cli checked the epoch checkpoint; a backup may be further
        raise RunError(f"{run_dir} has already trained {start.epoch} of {epochs} epochs; pass --epochs N to extend it")
    return start


def build_inputs(config: dict, strategy: tf.distribute.Strategy) -> Inputs:
    """The training and validation streams, once the data are found and known to fit in memory."""
    train_files, validation_files, dataset = load_splits(config)
    print(f"data: {dataset.describe()}; training on {len(train_files)} images")
    replicas, batch_size = strategy.num_replicas_in_sync, config["batch_size"]
    # Repeated datasets with explicit step counts: Keras knows each epoch's length from the
    # first epoch on (files dropped by ignore_errors would otherwise make it unknown).
    drop_remainder = len(train_files) >= batch_size
    train_steps, train_left = batches_per_pass("training", train_files, batch_size, replicas, drop_remainder)
    validation_steps, validation_left = batches_per_pass("validation", validation_files, batch_size, replicas, False)
    if replicas > 1 and train_left + validation_left:
        print(
            f"{replicas} replicas: each batch is cut to a multiple of {replicas} images, so that every replica gets "
            f"an equal share; left out per epoch: {train_left} of the {len(train_files)} training images and "
            f"{validation_left} of the {len(validation_files)} validation images"
        )
    cache = worker_cache(config["cache"], strategy)
    size, channels, crop = config["image_size"], config["channels"], config["crop"]
    if cache == "memory":
        data.check_memory_cache(len(train_files) + len(validation_files), size, channels)
    elif cache != "none":
        data.check_file_cache(cache, [train_files, validation_files], size, channels, crop)
    train_cli.check_memory(config, len(train_files), len(validation_files))
    image_args = {"image_size": size, "channels": channels, "crop": crop, "cache": cache}

    def train_data(skip_batches: int) -> tf.data.Dataset:
        dataset = data.make_dataset(
            train_files,
            batch_size=batch_size,
            shuffle=True,
            seed=config["seed"],
            drop_remainder=drop_remainder,
            repeat=True,
            skip_batches=skip_batches,
            **image_args,
        )
        return even_batches(dataset, replicas)

    validation = data.make_dataset(validation_files, batch_size=batch_size, repeat=True, **image_args)
    preview_files = validation_files[: 2 * GRID_COLUMNS]  # read once: not cached
    preview = data.make_dataset(preview_files, batch_size=2 * GRID_COLUMNS, **{**image_args, "cache": "none"})
    return Inputs(
        dataset,
        train_files,
        validation_files,
        cache,
        train_steps,
        validation_steps,
        even_batches(validation, replicas),
        next(iter(preview)).numpy(),
        train_data,
    )


def warn_if_shorter_than_the_warm_up(config: dict, steps_per_epoch: int) -> None:
    """A run shorter than its learning-rate warm-up barely trains: its samples are noise."""
    steps, warm_up = config["epochs"] * steps_per_epoch, config.get("lr_warmup_steps", 0)
    if steps < warm_up:
        print(
            f"warning: this run trains {steps} optimizer steps, fewer than the {warm_up} of the learning-rate "
            "warm-up (--lr-warmup): the model will barely learn and its samples will look like noise; train "
            "longer (--epochs, more images) or give a shorter --lr-warmup"
        )


@contextlib.contextmanager
def worker_output(run_dir: Path, chief: bool) -> Iterator[Path]:
    """Where this process writes: the run folder, or for a worker other than the chief, a scratch
    folder for its (identical) copies, as the tf.distribute guides recommend, removed at the end."""
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        yield run_dir
        return
    with tempfile.TemporaryDirectory(prefix="vae-worker-") as scratch:
        yield Path(scratch)


def restore(model: keras.Model, run_dir: Path, start: StartPoint, train_steps: int) -> list[np.ndarray] | None:
    """Load the state training starts from into `model`; returns the running metrics of a resumed
    epoch (from a step backup), which StepBackup puts back once Keras has reset them."""
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
        print(
            f"resuming {run_dir} in epoch {start.epoch + 1} after step {start.step} of {train_steps} "
            f"(optimizer step {int(model.optimizer.iterations.numpy())}, from {CHECKPOINT_DIR}/{BACKUP_DIR})"
        )
        return [variable.numpy() for metric in model.metrics for variable in metric.variables]
    if start.checkpoint:
        load_checkpoint(model, start.checkpoint[1])
        print(
            f"resuming {run_dir} after epoch {start.epoch} (optimizer step {int(model.optimizer.iterations.numpy())})"
        )
    return None


def fit(
    model: keras.Model, inputs: Inputs, start: StartPoint, epochs: int, callbacks: list, verbose: int, output_dir: Path
) -> None:
    """Train from `start` to the end of epoch `epochs`, unless a NaN/inf loss stops it."""
    fit_args = {
        "validation_data": inputs.validation_data,
        "validation_steps": inputs.validation_steps,
        "callbacks": callbacks,
        "verbose": verbose,
        "shuffle": False,  # the dataset shuffles itself, seeded
    }
    steps, epoch = inputs.train_steps, start.epoch
    if start.step:
        # Keras fits whole epochs, so the rest of an interrupted epoch is a fit of its own.
        model.fit(
            inputs.train_data(epoch * steps + start.step),
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=steps - start.step,
            **fit_args,
        )
        epoch += 1
        kept = latest_checkpoint(output_dir)
        if kept and kept[0] == epoch:
            # fit ends by copying the EMA weights into the model: carry on from the trained
            # weights, which the epoch checkpoint just written holds.
            load_checkpoint(model, kept[1])
    if epoch < epochs and not model.stop_training:  # set by StopOnNonFiniteLoss
        model.fit(
            inputs.train_data(epoch * steps), epochs=epochs, initial_epoch=epoch, steps_per_epoch=steps, **fit_args
        )


class TrainingFaults:
    """What stops a fit, told in one line with how to go on: a stop signal, a lost worker, a full
    disk. A full disk is reported by `raise_disk_full` after the block, once the failed write's
    objects (the data iterator holding the cache files open, h5py's file) are released."""

    def __init__(self, run_dir: Path, output_dir: Path, config: dict, inputs: Inputs, model: keras.Model):
        self.run_dir, self.output_dir, self.config, self.inputs, self.model = run_dir, output_dir, config, inputs, model
        self.full_disk: str | None = None  # what a write found the disk full for: "cache" or "run"

    def __enter__(self) -> TrainingFaults:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> bool:
        run_dir = self.run_dir
        if isinstance(error, TrainingStopped):
            resume = resume_command(run_dir)
            if self.config["strategy"] == "multiworker":
                resume = f"{resume} --strategy multiworker on every worker, or {resume} alone"
            raise TrainingStopped(f"{error}, state saved in {run_dir}; continue with: {resume}", error.signum) from None
        if isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)):
            # A worker that dies or hangs stops sending heartbeats; TensorFlow's coordination service
            # notices within seconds and aborts the collective operations of the others.
            reason = re.sub(r"\{\{.*?\}\}\s*", "", error.message.splitlines()[0]).rstrip(":")
            raise RunError(
                f"lost another worker of the cluster ({reason}); {run_dir} keeps its last checkpoint: restart every "
                f"worker with --resume {run_dir} --strategy multiworker, or go on alone with --resume {run_dir}"
            ) from None
        # h5py raises OSError or RuntimeError when the disk fills mid-write, TensorFlow's checkpoint an
        # OpError, tf.data's file cache a ResourceExhaustedError
        if isinstance(error, (OSError, RuntimeError, tf.errors.OpError)):
            if fills_file_cache(error, self.inputs.cache):
                self.full_disk = "cache"
            elif getattr(error, "errno", None) in NO_SPACE or disk_is_full(self.model, self.output_dir):
                self.full_disk = "run"
        return self.full_disk is not None

    def raise_disk_full(self) -> None:
        if self.full_disk == "cache":
            file_lists = [self.inputs.train_files, self.inputs.validation_files]
            raise file_cache_full_error(self.inputs.cache, file_lists, self.config, self.run_dir)
        if self.full_disk == "run":
            raise disk_full_error(self.model, self.output_dir)


def non_finite_loss_error(failed_at: tuple[int, int], run_dir: Path) -> RunError:
    kept = latest_checkpoint(run_dir)
    kept_text = (
        f"the last good checkpoint (epoch {kept[0]}) is kept in {kept[1].parent}"
        if kept
        else "no epoch finished, so no checkpoint was written"
    )
    return RunError(
        f"loss became NaN/inf at epoch {failed_at[0]}, step {failed_at[1]}; {kept_text}; "
        "lower --lr or --beta, or try --recon gaussian, and start a new run"
    )


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
    checkpoint = checkpoint_bytes(model, run_dir / CHECKPOINT_DIR)
    models = variable_bytes(model.encoder.weights + model.decoder.weights)
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
    """Whether `error` is a write into the file cache folder `cache` that found its disk full:
    TensorFlow's error names the file written and the system's reason."""
    if cache in ("memory", "none"):
        return False
    text = str(error)
    return str(Path(cache)) in text and any(os.strerror(code) in text for code in NO_SPACE)


def file_cache_full_error(cache: str, file_lists: list[list[Path]], config: dict, run_dir: Path) -> RunError:
    """The error for a file cache that filled its disk while it was written, although it fitted
    when training began (other processes wrote there since): the unfinished cache files are
    removed, the run folder keeps its checkpoints, and the message says how much space is needed
    and how to go on."""
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


def fit_density(run_dir: Path, dataset: data.Dataset, config: dict) -> None:
    """latent_density.json for the final model, over the images it trained on: the density
    generate.py draws random faces from (latent.py). A failure here loses no training, so it is
    reported with the command to retry."""
    try:
        density = latent.fit_folder_density(
            KerasBackend(run_dir),
            dataset,
            training_splits(config),
            limit=config["limit"],
            seed=config["seed"],
            log=print,
        )
        path = latent.write_density(density, run_dir)
    except (latent.DensityError, RunFolderError, data.DataError) as error:
        print(f"warning: no latent density was fitted ({error}); retry with: python latent.py --run {run_dir}")
        return
    print(f"wrote {path}: {density.components} Gaussian component(s), chosen on the validation images")


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> None:
    """`python train.py ...`: a problem is one line `error: ...`, exit status 1."""
    run_main(lambda: train_command(argv))


def train_command(argv: Sequence[str] | None = None) -> None:
    """Check the command line and the run folder, then train there; RunError for what the user can
    fix, and for a stop by SIGTERM or Ctrl-C, a line that says how to go on and the signal's status."""
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
    except (RunFolderError, data.DataError) as error:  # the user errors of runs.py and data.py
        raise RunError(str(error)) from None
    except TrainingStopped as stopped:
        # On a line of its own, also after a progress bar that Keras rewrites in place on a terminal.
        new_line = "\n" if sys.stdout.isatty() else ""
        print(f"{new_line}{stopped}", file=sys.stderr)
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
