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
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TensorFlow's C++ start-up chatter

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import data  # noqa: E402
import latent  # noqa: E402
import vae  # noqa: E402
from images import DEFAULT_CROP, make_grid, save_png  # noqa: E402
from runs import RUN_FORMAT, HelpFormatter, KerasBackend, RunFolderError, read_config, write_text_atomic  # noqa: E402

log = logging.getLogger("train")

CHECKPOINT_DIR = "checkpoint"
RECIPE = vae.DEFAULT_RECIPE
GRID_COLUMNS = 8


class RunError(RuntimeError):
    """A problem the user can fix, reported as one line."""


# --------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a VAE on CelebA (Kaggle or original layout) or any folder of faces.",
        formatter_class=HelpFormatter,
    )
    io = parser.add_argument_group("data and run folder")
    io.add_argument("--data", help="CelebA root folder (Kaggle or original layout) or a plain folder of faces")
    io.add_argument("--out", help="run folder (default: runs/<timestamp>)")
    io.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run in this folder from its last checkpoint; its config.json is reused, "
        "only --epochs (to extend), --data (if moved) and --strategy may change",
    )
    io.add_argument("--limit", type=int, default=0, help="train on the first N training images only (0: all)")
    io.add_argument(
        "--train-split",
        choices=("train", "train+validation"),
        default="train",
        help="partitions trained on; with train+validation the validation figures are on seen images "
        "and only the test partition stays unseen",
    )
    io.add_argument(
        "--cache", default="memory", help="decoded-image cache: memory, none, or a directory for a file cache"
    )
    io.add_argument(
        "--crop",
        type=int,
        default=DEFAULT_CROP,
        help="side of the central square kept, in pixels of the 178-wide aligned CelebA frame (0: whole square)",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", choices=("vae", "ae"), default=RECIPE["model"], help="VAE or plain autoencoder baseline"
    )
    model.add_argument("--latent", type=int, default=RECIPE["latent_dim"], help="latent dimension")
    model.add_argument(
        "--image-size", type=int, default=RECIPE["image_size"], help="square image side (a multiple of 2^len(filters))"
    )
    model.add_argument(
        "--channels", type=int, choices=(1, 3), default=RECIPE["channels"], help="3 for RGB, 1 for grayscale"
    )
    model.add_argument("--grayscale", action="store_const", const=1, dest="channels", help="same as --channels 1")
    model.add_argument(
        "--filters", default=",".join(map(str, RECIPE["filters"])), help="encoder filters per block, comma separated"
    )
    model.add_argument("--hidden", type=int, default=RECIPE["hidden_units"], help="units of the encoder's dense layer")
    model.add_argument(
        "--upsampling",
        choices=vae.UPSAMPLING_MODES,
        default=RECIPE["upsampling"],
        help="decoder blocks: UpSampling2D+Conv2D (nearest) or Conv2DTranspose (transpose)",
    )
    loss = parser.add_argument_group("loss")
    loss.add_argument(
        "--recon",
        choices=vae.RECONSTRUCTION_LOSSES,
        default=RECIPE["reconstruction"],
        help="reconstruction loss, summed over pixels (gaussian: calibrated decoder variance)",
    )
    loss.add_argument("--beta", type=float, default=RECIPE["beta"], help="weight of the KL term (beta-VAE when > 1)")
    loss.add_argument(
        "--beta-warmup",
        type=int,
        default=RECIPE["beta_warmup_steps"],
        metavar="STEPS",
        help="linear KL warm-up from 0 to beta over this many optimizer steps (0: none)",
    )
    loss.add_argument(
        "--beta-cycle",
        type=int,
        default=RECIPE["beta_cycle_steps"],
        metavar="STEPS",
        help="cyclical KL annealing period in optimizer steps (0: none)",
    )
    opt = parser.add_argument_group("optimisation")
    opt.add_argument(
        "--epochs", type=int, help=f"number of epochs (default: {RECIPE['epochs']}; on --resume: the run's own)"
    )
    opt.add_argument("--batch-size", type=int, default=RECIPE["batch_size"], help="global batch size")
    opt.add_argument("--lr", type=float, default=RECIPE["learning_rate"], help="Adam learning rate")
    opt.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default=RECIPE["lr_schedule"],
        help="cosine: decay from --lr to 5%% of it over all epochs (stretched when --resume extends them)",
    )
    opt.add_argument(
        "--lr-warmup",
        type=int,
        default=RECIPE["lr_warmup_steps"],
        metavar="STEPS",
        help="raise the learning rate linearly from 0 to --lr over this many optimizer steps, then follow "
        "--lr-schedule over the rest (0: none)",
    )
    opt.add_argument(
        "--ema",
        type=float,
        default=RECIPE["ema"],
        help="EMA momentum of the weights, e.g. 0.999 (0: off); saved models and grids use the EMA weights",
    )
    opt.add_argument(
        "--mixed-precision",
        action="store_true",
        help="mixed_float16 on GPU, mixed_bfloat16 on CPU; loss and metrics stay float32",
    )
    opt.add_argument(
        "--strategy",
        choices=("auto", "mirrored", "multiworker", "none"),
        default="auto",
        help="tf.distribute strategy: auto uses MirroredStrategy with more than one GPU; multiworker reads the "
        "cluster from TF_CONFIG (see README); on --resume the one given here, whatever the run used before",
    )
    opt.add_argument("--seed", type=int, default=RECIPE["seed"], help="random seed (weights, sampling, data order)")
    opt.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Keras progress: 0 silent, 1 bar, 2 one line per epoch",
    )
    return parser.parse_args(argv)


def parse_filters(text: str) -> list[int]:
    try:
        filters = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise RunError(f"--filters {text!r} is not a comma-separated list of integers, e.g. 32,64,128,256") from None
    if not filters or min(filters) < 1:
        raise RunError(f"--filters {text!r} needs positive integers, e.g. 32,64,128,256")
    return filters


def resolve_config(args: argparse.Namespace) -> dict:
    """The run's settings: from the command line for a new run, from config.json on --resume."""
    if args.resume:
        run_dir = Path(args.resume)
        config = read_config(run_dir)
        if args.epochs is not None:
            config["epochs"] = args.epochs
        if args.data:
            config["data"] = str(args.data)
        # Every strategy trains the same global batch the same way: a multi-worker run can go on alone.
        config["strategy"] = args.strategy
        return config
    if not args.data:
        raise RunError("--data is required: the CelebA folder (see README: getting CelebA), or --resume RUN")
    for name in ("latent", "batch_size", "epochs", "hidden"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RunError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    for name in ("lr_warmup", "beta_warmup", "beta_cycle"):
        if getattr(args, name) < 0:
            raise RunError(f"--{name.replace('_', '-')} is a number of steps, 0 or more (got {getattr(args, name)})")
    if not 0.0 <= args.ema < 1.0:
        raise RunError(f"--ema must be in [0, 1), e.g. 0.999 (got {args.ema})")
    if args.lr <= 0 or not math.isfinite(args.lr):
        raise RunError(f"--lr must be a positive number (got {args.lr})")
    filters = parse_filters(args.filters)
    try:
        vae.check_architecture(args.image_size, filters)
    except ValueError as error:
        raise RunError(str(error)) from None
    out = Path(args.out) if args.out else Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return {
        "format": RUN_FORMAT,
        "run_dir": str(out),
        "data": str(args.data),
        "limit": args.limit,
        "train_split": args.train_split,
        "cache": args.cache,
        "crop": args.crop,
        "model": args.model,
        "latent_dim": args.latent,
        "image_size": args.image_size,
        "channels": args.channels,
        "filters": filters,
        "hidden_units": args.hidden,
        "upsampling": args.upsampling,
        "reconstruction": args.recon,
        "beta": args.beta,
        "beta_warmup_steps": args.beta_warmup,
        "beta_cycle_steps": args.beta_cycle,
        "epochs": args.epochs if args.epochs is not None else RECIPE["epochs"],
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "lr_schedule": args.lr_schedule,
        "lr_warmup_steps": args.lr_warmup,
        "ema": args.ema,
        "mixed_precision": args.mixed_precision,
        "strategy": args.strategy,
        "seed": args.seed,
        "value_range": [0.0, 1.0],
        "layout": "NHWC",
    }


# --------------------------------------------------------------------------- run folder
def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """(completed epochs, path) of the newest checkpoint, or None."""
    found = sorted((run_dir / CHECKPOINT_DIR).glob("epoch_*.weights.h5"))
    if not found:
        return None
    return int(found[-1].name.split("_")[1].split(".")[0]), found[-1]


def choose_strategy(name: str) -> tf.distribute.Strategy:
    # Multi-worker first: it must configure collective ops before anything (even listing the
    # devices) starts TensorFlow's runtime.
    if name == "multiworker":
        try:
            cluster = json.loads(os.environ["TF_CONFIG"])
            workers = sum(len(tasks) for tasks in cluster["cluster"].values())
            task = f"{cluster['task']['type']} {cluster['task']['index']}"
        except (KeyError, TypeError, ValueError):
            raise RunError(
                "--strategy multiworker needs TF_CONFIG set to the cluster and this worker's task, e.g. "
                """'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}' """
                "(see README: multi-GPU and multi-node training)"
            ) from None
        print(f"multiworker: {task} of {workers}, waiting until all of them have started", flush=True)
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        # Mirror over the GPUs; without any, over the logical CPU devices (several only when
        # configured with tf.config.set_logical_device_configuration, as the tests do).
        devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


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
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(handle)
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


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
    """Train (or continue) the run described by `config`; returns the Keras history."""
    run_dir = Path(config["run_dir"])
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        raise RunError(f"{run_dir} has no checkpoint to resume from; start a new run without --resume")
    if not resume and latest_checkpoint(run_dir) is not None:
        raise RunError(f"{run_dir} already holds a run; use --resume {run_dir} to continue it, or another --out")
    initial_epoch = checkpoint[0] if checkpoint else 0
    if initial_epoch >= config["epochs"]:
        raise RunError(
            f"{run_dir} has already trained {initial_epoch} of {config['epochs']} epochs; pass --epochs N to extend it"
        )

    # First: MultiWorkerMirroredStrategy must configure collective ops before TensorFlow runs any op.
    strategy = choose_strategy(config["strategy"])
    replicas = strategy.num_replicas_in_sync
    if config["batch_size"] % replicas:
        raise RunError(
            f"--batch-size {config['batch_size']} must be a multiple of the {replicas} replicas, "
            "each of which trains on an equal share of the global batch"
        )
    # The same seeds as an uninterrupted run: the data stream below skips the batches already
    # trained on, and the sampling noise's state comes back with the checkpoint.
    keras.utils.set_random_seed(config["seed"])
    train_files, validation_files, description = load_splits(config)
    print(f"data: {description}; training on {len(train_files)} images")
    image_args = {
        "image_size": config["image_size"],
        "channels": config["channels"],
        "crop": config["crop"],
        "cache": worker_cache(config["cache"], strategy),
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

    # With several workers only the chief writes the run folder; the others write their
    # (identical) copies to a scratch folder, as the tf.distribute guides recommend; it is
    # removed when `scratch` goes away, however this function ends.
    scratch = None if is_chief(strategy) else tempfile.TemporaryDirectory(prefix="vae-worker-")
    output_dir = Path(scratch.name) if scratch else run_dir
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
            model.load_weights(checkpoint[1])
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
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
            # A worker that dies or hangs stops sending heartbeats; TensorFlow's coordination service
            # notices within seconds and aborts the collective operations of the others.
            reason = re.sub(r"\{\{.*?\}\}\s*", "", error.message.splitlines()[0]).rstrip(":")
            raise RunError(
                f"lost another worker of the cluster ({reason}); {run_dir} keeps its last checkpoint: restart every "
                f"worker with --resume {run_dir} --strategy multiworker, or go on alone with --resume {run_dir}"
            ) from None
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
    if scratch is not None:
        print(f"done: this worker's share of {run_dir}, which the chief worker writes")
        return history
    fit_density(config, run_dir)
    print(
        f"done: {run_dir} (encoder.keras, decoder.keras, latent_density.json, history.csv, loss_curves.png, "
        "samples/, reconstructions/)"
    )
    return history


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


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        config = resolve_config(args)
        train(config, resume=bool(args.resume), verbose=args.verbose)
    except (RunError, RunFolderError, data.DataError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
