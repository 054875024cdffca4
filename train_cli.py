"""train.py's command line and run-folder checks, with no TensorFlow, so that they answer at once.

Each problem is one line that says what to do (RunError): the settings (flags, or config.json on
--resume), the run folder (new, empty or resumable; locked), the --cache folder, TF_CONFIG for
--strategy multiworker, and the memory a run needs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import fcntl
import json
import math
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from fnmatch import fnmatch
from itertools import pairwise
from pathlib import Path

import data
import latent
from errors import UserError
from images import CELEBA_WIDTH
from recipe import DEFAULTS, DISCRIMINATOR_SETTINGS, GROUPS, PRECISION_POLICIES, SETTINGS
from runs import (
    BACKUP_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DENSITY_FILE,
    HISTORY_FILE,
    LOCK_FILE,
    LOSS_CURVES_FILE,
    RECONSTRUCTIONS_DIR,
    RUN_FORMAT,
    SAMPLES_DIR,
    HelpFormatter,
    RunFolderError,
    check_architecture,
    check_writable,
    read_config,
)

TF_CONFIG_HELP = (
    "--strategy multiworker needs TF_CONFIG set to the cluster and this worker's task, e.g. "
    """'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}' """
    "(a list of host:port per job, chief and worker; the task's type is one of those jobs and its index a "
    "position in that job's list; see docs/training.md: several machines)"
)
CLUSTER_JOBS = ("chief", "worker")  # the jobs of MultiWorkerMirroredStrategy's cluster
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a full quota
# The files train.py renames into place once written, by folder of the run: a killed run leaves
# them behind, a full disk half-written. images.atomic_write's are .<name>.<8 hex digits>.tmp.
TEMPORARY_FILES = {
    ".": (".*.partial.*", *(f".{n}.????????.tmp" for n in (CONFIG_FILE, HISTORY_FILE, DENSITY_FILE, LOSS_CURVES_FILE))),
    CHECKPOINT_DIR: (".partial*",),
    **dict.fromkeys((RECONSTRUCTIONS_DIR, SAMPLES_DIR), (".*.png.????????.tmp",)),
    # tf.train.CheckpointManager's: its index file's next version, and a backup being written
    f"{CHECKPOINT_DIR}/{BACKUP_DIR}": ("checkpoint.tmp*", "ckpt-*_temp"),
}


class RunError(UserError):
    """A problem with the run the user can fix, reported as one line."""


class TrainingStopped(Exception):
    """Training stopped by SIGTERM or Ctrl-C after a backup; the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + (signum if signum in (signal.SIGINT, signal.SIGTERM) else signal.SIGTERM)


# --------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags of recipe.SETTINGS, with `given_flags`: the names of those given on the command line."""
    parser = argparse.ArgumentParser(
        description="Train a VAE on CelebA (Kaggle or original layout) or any folder of faces.",
        formatter_class=HelpFormatter,
    )
    for title, settings in GROUPS.items():
        group = parser.add_argument_group(title)
        for setting in settings:
            default = ",".join(map(str, setting.default)) if isinstance(setting.default, list) else setting.default
            fields = {key: getattr(setting, key) for key in ("type", "choices", "action", "nargs", "const", "metavar")}
            options = {key: value for key, value in fields.items() if value is not None}
            group.add_argument(setting.flag, dest=setting.name, default=default, help=setting.help, **options)
    args = parser.parse_args(argv)
    # Parsed again onto a namespace of markers: argparse replaces those of the flags it is given.
    unset = object()
    again = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))
    args.given_flags = {name for name, value in vars(again).items() if value is not unset}
    return args


def flag(name: str) -> str:
    """The command-line spelling of a setting's name (argparse dest, config.json key): latent_dim -> --latent."""
    return next(setting.flag for setting in SETTINGS if setting.name == name)


def parse_filters(text: str, name: str = "--filters") -> list[int]:
    try:
        filters = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise RunError(f"{name} {text!r} is not a comma-separated list of integers, e.g. 32,64,128,256") from None
    if not filters or min(filters) < 1:
        raise RunError(f"{name} {text!r} needs positive integers, e.g. 32,64,128,256")
    return filters


# Each setting's range: (keys, whole numbers only, whether a value is in it, what the error says of it).
RANGES = (
    (("latent_dim", "hidden_units", "batch_size", "epochs", "discriminator_filters"), True, lambda v: v >= 1,
     "must be at least 1"),
    (("lr_warmup_steps", "beta_warmup_steps", "beta_cycle_steps"), True, lambda v: v >= 0,
     "is a number of steps, 0 or more"),
    (("adversarial_start",), True, lambda v: abs(v) < 2**31, "is a step, counted back from the run's end when negative"),
    (("limit",), True, lambda v: v >= 0, "is a number of images, 0 (all) or more"),
    (("crop",), True, lambda v: 0 <= v <= CELEBA_WIDTH, f"is a side in pixels of the {CELEBA_WIDTH}-pixel wide "
     f"CelebA frame, 0 (the whole square) to {CELEBA_WIDTH}"),
    (("seed",), True, lambda v: 0 <= v < 2**32, "must be in [0, 2^32)"),
    (("beta",), False, lambda v: v >= 0, "must be 0 or more, e.g. 0.25"),
    (("learning_rate",), False, lambda v: v > 0, "must be a positive number, e.g. 2e-3"),
    (("adversarial",), False, lambda v: v >= 0, "must be 0 (off) or more, e.g. 0.5"),
    (("ema",), False, lambda v: 0 <= v < 1, "must be in [0, 1), e.g. 0.999"),
)  # fmt: skip


def check_settings(config: dict, name_of: Callable[[str], str]) -> None:
    """RunError for a missing or out-of-range setting, named by name_of(key): a flag, or config.json's key."""

    def number(key: str, whole: bool) -> float:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            raise RunError(f"{name_of(key)} must be a {'whole ' if whole else ''}number (got {value!r})")
        if not math.isfinite(value):
            raise RunError(f"{name_of(key)} must be a finite number (got {value})")
        return value

    missing = [setting.name for setting in SETTINGS if setting.required and setting.name not in config]
    if missing:
        raise RunError(f"{name_of(missing[0])} is missing")
    for keys, whole, in_range, rule in RANGES:
        for key in keys:
            if not in_range(number(key, whole)):
                raise RunError(f"{name_of(key)} {rule} (got {config[key]})")
    for setting in SETTINGS:
        key, choices = setting.name, setting.choices
        if key == "mixed_precision":  # config.json records the policy chosen
            choices = (*choices, *PRECISION_POLICIES)
        if setting.in_config and choices and key in config and config[key] not in choices:
            raise RunError(f"{name_of(key)} must be one of {', '.join(map(str, choices))} (got {config[key]!r})")

    def widths(value: object) -> bool:
        return isinstance(value, list) and all(type(f) is int and f > 0 for f in value)

    filters = config["filters"]
    if not widths(filters):
        raise RunError(f"{name_of('filters')} must be a list of positive integers (got {filters!r})")
    try:
        check_architecture(number("image_size", whole=True), filters)
    except ValueError as error:
        raise RunError(str(error)) from None
    decoder_filters = config["decoder_filters"]  # None: the encoder's
    if decoder_filters is not None and not (widths(decoder_filters) and len(decoder_filters) == len(filters)):
        raise RunError(
            f"{name_of('decoder_filters')} must be {len(filters)} positive integers, one per block of "
            f"{name_of('filters')} {','.join(map(str, filters))} (got {decoder_filters!r})"
        )


def checked_config(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict]:
    """The flags and the run's settings (config.json's on --resume), checked; RunError for what is wrong."""
    args = parse_args(argv)
    if args.backup_every < 0:  # --backup-every and --worker-start-timeout go with new and resumed runs alike
        raise RunError(f"--backup-every is a number of steps, 0 or more (got {args.backup_every})")
    if not 0 < args.worker_start_timeout < math.inf:
        raise RunError(
            f"--worker-start-timeout is a number of seconds above 0, e.g. {DEFAULTS['worker_start_timeout']} "
            f"(got {args.worker_start_timeout})"
        )
    if args.resume:
        resumable = [setting for setting in SETTINGS if setting.on_resume]
        phase = args.given_flags & set(DISCRIMINATOR_SETTINGS)
        refused = sorted(flag(name) for name in args.given_flags - {setting.name for setting in resumable} - phase)
        resume_flags = [setting.flag for setting in resumable if setting.name != "resume"]
        if refused:
            raise RunError(
                f"--resume continues {args.resume} with the settings of its config.json, so "
                f"{', '.join(refused)} would be ignored: drop {'it' if len(refused) == 1 else 'them'} "
                f"(only {', '.join(resume_flags[:-1])} and {resume_flags[-1]} go with --resume), "
                "or start a new run with another --out"
            )
        try:
            config = read_config(args.resume)
        except RunFolderError as error:
            raise RunError(str(error)) from None
        config |= {s.name: getattr(args, s.name) for s in resumable if s.in_config and s.name in args.given_flags}
        if phase:
            config |= discriminator_phase(args, config)
        # Every strategy trains the same global batch the same way: a multi-worker run can go on alone.
        config["strategy"] = args.strategy
        config_json = Path(args.resume) / CONFIG_FILE
        check_settings(config, lambda key: flag(key) if key in args.given_flags else f"{key!r} in {config_json}")
        return args, config
    if not args.data:
        raise RunError("--data is required: the CelebA folder (see README: Get CelebA), or --resume RUN")
    out = Path(args.out) if args.out else Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    config = {"format": RUN_FORMAT, "run_dir": str(out)}
    config |= {setting.name: getattr(args, setting.name) for setting in SETTINGS if setting.in_config}
    filters = parse_filters(args.filters)
    decoder_filters = parse_filters(args.decoder_filters, "--decoder-filters") if args.decoder_filters else None
    config |= {"filters": filters, "decoder_filters": decoder_filters, "value_range": [0.0, 1.0], "layout": "NHWC"}
    check_settings(config, flag)
    return args, config


def discriminator_phase(args: argparse.Namespace, config: dict) -> dict:
    """The discriminator's settings --resume adds to a run trained without one: a phase from --adversarial-start."""
    if config["adversarial"]:
        raise RunError(
            f"{args.resume} trains with a discriminator already, whose settings stay as they are: drop "
            f"{', '.join(flag(name) for name in DISCRIMINATOR_SETTINGS if name in args.given_flags)}"
        )
    if "adversarial" not in args.given_flags or not args.adversarial:
        raise RunError(
            "--adversarial-start and --discriminator-filters go with --resume only beside --adversarial WEIGHT"
        )
    return {name: getattr(args, name) for name in DISCRIMINATOR_SETTINGS}


def read_tf_config() -> tuple[dict[str, list[str]], str, int]:
    """(cluster, task type, task index) from TF_CONFIG, checked first: TensorFlow fails or hangs on a wrong type."""

    def refuse(problem: str) -> RunError:
        return RunError(f"TF_CONFIG {problem}; {TF_CONFIG_HELP}")

    if "TF_CONFIG" not in os.environ:
        raise RunError(TF_CONFIG_HELP)
    try:
        tf_config = json.loads(os.environ["TF_CONFIG"])
    except ValueError as error:
        raise refuse(f"is not JSON ({error})") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster"), dict):
        raise refuse('needs a "cluster" object')
    cluster = tf_config["cluster"]
    for job, addresses in cluster.items():
        if job not in CLUSTER_JOBS:
            raise refuse(f"has a job {job!r} in its cluster, where only {' and '.join(CLUSTER_JOBS)} go")
        if not isinstance(addresses, list) or not addresses or not all(is_address(a) for a in addresses):
            raise refuse(f'needs a non-empty list of "host:port" strings for the job {job!r} (got {addresses!r})')
    if len(cluster.get("chief", [])) > 1:
        raise refuse("has more than one chief")
    task = tf_config.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise refuse(f'needs a "task" object whose "type" is a job of its cluster ({", ".join(cluster)})')
    kind, index = task["type"], task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise refuse(
            f'needs a task "index" from 0 to {len(cluster[kind]) - 1}, a position in the {kind!r} list (got {index!r})'
        )
    return cluster, kind, index


def is_address(address: object) -> bool:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def writes_run_folder(config: dict) -> bool:
    """False for a worker of a multi-worker run other than its chief, which writes the run folder."""
    if config["strategy"] != "multiworker":
        return True
    cluster, kind, index = read_tf_config()
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


# --------------------------------------------------------------------------- memory
def parameter_count(config: dict) -> int:
    """About the weights vae.py builds from `config`: the kernels of the convolutions (3x3, the
    discriminator's 4x4) and the dense layers, counted without building them."""
    filters, decoder_filters = config["filters"], config["decoder_filters"] or config["filters"]
    channels, latent, hidden = config["channels"], config["latent_dim"], config["hidden_units"]
    side = config["image_size"] >> len(filters)  # of the encoder's last feature map and the decoder's first
    discriminator = [channels, *discriminator_widths(config), 1] if config["adversarial"] else []
    output_block = [config["output_filters"]] if config["output_filters"] else []
    convolutions = 9 * sum(
        a * b
        for widths in ([channels, *filters], [channels, *output_block, *decoder_filters])
        for a, b in pairwise(widths)
    )
    convolutions += 16 * sum(a * b for a, b in pairwise(discriminator))
    return convolutions + side * side * (filters[-1] * hidden + latent * decoder_filters[-1]) + 2 * hidden * latent


def discriminator_widths(config: dict) -> list[int]:
    """The patch discriminator's widths (vae.build_discriminator), none without --adversarial."""
    return [config["discriminator_filters"] * 2**block for block in range(4)] if config["adversarial"] else []


def activation_count(config: dict) -> int:
    """Values of the feature maps one image flows through (the discriminator's twice: image, reconstruction)."""
    size, filters, channels = config["image_size"], config["filters"], config["channels"]
    decoder_filters = config["decoder_filters"] or filters
    sides = [size >> (index + 1) for index in range(len(filters))]
    encoder = sum(3 * side * side * width for side, width in zip(sides, filters, strict=True))  # conv, BN, ReLU
    decoder = sum(4 * (2 * side) ** 2 * width for side, width in zip(sides[1:], decoder_filters, strict=False))
    discriminator_sides = [size // 2, size // 4, size // 8, size // 8]
    discriminator = 2 * sum(
        3 * side * side * width for side, width in zip(discriminator_sides, discriminator_widths(config), strict=False)
    )
    output_block = 4 * size * size * config["output_filters"]  # conv, BN, ReLU and the output conv's input
    return (
        size * size * channels * 4 + encoder + decoder + size * size * decoder_filters[0] + output_block + discriminator
    )


def memory_needs(config: dict, train_count: int, validation_count: int) -> list[tuple[str, str, float]]:
    """(what, the flags that make it smaller, rough bytes) of the memory a run takes."""
    weights = 4 * parameter_count(config)
    size, batch = config["image_size"], config["batch_size"]
    # latent.py's mixture fit after training, on at most MAX_FIT_IMAGES posterior means.
    points = min(train_count, latent.MAX_FIT_IMAGES)
    density_fit = latent.fit_memory_bytes(points, config["latent_dim"], latent.MIXTURE_SIZES)
    needs = [
        # Each weight also has its gradient, Adam's two moments, the float32 copy saved each epoch, the EMA.
        ("weights and optimizer state", "--latent, --hidden, --filters, --decoder-filters or --image-size", weights * (5 + (config["ema"] > 0))),
        # The feature maps kept for the backward pass and their gradients (float32).
        (f"activations of a batch of {batch} at {size}x{size}", "--batch-size or --image-size", 8 * batch * activation_count(config)),
        ("latent density fit after training", "--latent", density_fit),
    ]  # fmt: skip
    if config["cache"] == "memory":
        cache = data.memory_cache_bytes(train_count + validation_count, size, config["channels"])
        needs.append(("memory cache", "--cache DIR or --cache none", cache))
    return sorted(needs, key=lambda need: -need[2])


def check_memory(config: dict, train_count: int, validation_count: int) -> None:
    """RunError, with the figures and what to change, for a run that would not fit in the memory available."""
    available = data.available_memory()
    needs = memory_needs(config, train_count, validation_count)
    needed = sum(size for _, _, size in needs)
    if available is None or needed <= available:
        return
    # The largest parts, until the others fit: each that, with the smaller ones, needs more than is available.
    changes = [
        change for index, (_, change, _) in enumerate(needs) if sum(size for _, _, size in needs[index:]) > available
    ]
    breakdown = ", ".join(f"{data.size_text(size)} {what}" for what, _, size in needs)
    raise RunError(
        f"this run needs about {data.size_text(needed)} of memory and {data.size_text(available)} is available "
        f"({breakdown}); make it smaller with {'; '.join(changes)}"
    )


# --------------------------------------------------------------------------- run folder
def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """(completed epochs, path) of the newest checkpoint, or None."""
    newest = max((run_dir / CHECKPOINT_DIR).glob("epoch_*.weights.h5"), default=None)
    return (int(newest.name.split("_")[1].split(".")[0]), newest) if newest else None


def has_backup(run_dir: Path) -> bool:
    """Whether `run_dir` holds a step backup (recovery.StepBackup): its CheckpointManager index file."""
    return (run_dir / CHECKPOINT_DIR / BACKUP_DIR / "checkpoint").is_file()


def check_run_folder(run_dir: Path, config: dict, resume: bool) -> None:
    """RunError unless `run_dir` suits a new run (new or empty) or --resume (recovery.start_point checks a backup)."""
    checkpoint = latest_checkpoint(run_dir)
    if resume:
        if checkpoint is None and not has_backup(run_dir):
            raise RunError(f"{run_dir} has no checkpoint to resume from; start a new run without --resume")
        if checkpoint is not None and checkpoint[0] >= config["epochs"]:
            raise RunError(
                f"{run_dir} has already trained {checkpoint[0]} of {config['epochs']} epochs; "
                "pass --epochs N to extend it"
            )
        return
    if checkpoint is not None or has_backup(run_dir):
        raise RunError(f"{run_dir} already holds a run; use --resume {run_dir} to continue it, or another --out")
    # A run that died writing its config.json leaves a temporary file: that folder counts as empty.
    debris = (LOCK_FILE, *TEMPORARY_FILES["."])
    contents = sorted(path.name for path in run_dir.iterdir() if not any(fnmatch(path.name, p) for p in debris))
    if (run_dir / CONFIG_FILE).is_file() and any(name.endswith(".onnx") for name in contents):
        raise RunError(f"{run_dir} holds an exported model ({', '.join(contents[:4])}); give a new or empty --out")
    if (run_dir / CONFIG_FILE).is_file():
        raise RunError(
            f"{run_dir} holds a run that stopped before its first checkpoint; delete it, or give a new or empty --out"
        )
    if contents:
        raise RunError(
            f"{run_dir} is not empty ({', '.join(contents[:4])}{', ...' if len(contents) > 4 else ''}) "
            "and holds no run to resume; give a new or empty --out"
        )


def remove_temporary_files(run_dir: Path) -> list[Path]:
    """Remove (and return) the TEMPORARY_FILES in `run_dir`, each emptied first: its space comes back if held open."""
    removed = []
    for folder, patterns in TEMPORARY_FILES.items():
        for pattern in patterns:
            for path in (run_dir / folder).glob(pattern):
                for file in [path, *path.rglob("*")] if path.is_dir() else [path]:
                    if file.is_file():
                        os.truncate(file, 0)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def locked_run_folder(run_dir: Path, config: dict, resume: bool) -> Iterator[None]:
    """Lock `run_dir` (created if new) with fcntl.flock on its LOCK_FILE, check that it suits the run
    and remove what a killed run left; a refused folder is left as it was found."""
    check_writable(run_dir, folder=True)
    lock_path = run_dir / LOCK_FILE
    created_folders = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # deepest first
    created_lock = not lock_path.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunError(f"cannot write the run folder {run_dir} ({error.strerror}); give another --out") from None
    checked = False
    with os.fdopen(descriptor, "r+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = lock.read().strip() or "unknown"
            raise RunError(
                f"{run_dir} is in use by another training (pid {owner}); wait for it to end, or give another --out"
            ) from None
        try:
            check_run_folder(run_dir, config, resume)
            checked = True
            lock.truncate()
            print(os.getpid(), file=lock, flush=True)
            removed = remove_temporary_files(run_dir)
            if removed:
                print(f"removed {len(removed)} temporary file(s) an interrupted run left in {run_dir}")
            yield
        finally:
            if created_lock and (not checked or [path.name for path in run_dir.iterdir()] == [LOCK_FILE]):
                lock_path.unlink()  # refused, or stopped before writing anything: leave no trace
                for folder in created_folders:
                    if any(folder.iterdir()):
                        break  # it holds something else now, such as a --cache folder made beside the run
                    folder.rmdir()


def check_cache_folder(cache: str) -> None:
    """A --cache folder must be writable: check it now rather than after the data are listed."""
    if cache not in ("memory", "none"):
        check_writable(cache, folder=True, flag="--cache")


if __name__ == "__main__":
    sys.exit("error: train_cli.py holds train.py's command line and checks; run: python train.py --help")
