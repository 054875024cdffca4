"""The model folder: its file names, config.json's reader, the model backends (`open_backend`: .keras or
.onnx files), the checks every script makes of its --out, and the --help formatter. Keras is imported only
to load a .keras model, so the ONNX path needs numpy and onnxruntime only. A library module."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

import inference
from errors import UserError, batches, first_line, not_a_script
from images import DEFAULT_CROP, atomic_write, load_face

RUN_FORMAT = "celeba-vae-run/1"
ATTRIBUTES_FORMAT = "celeba-vae-attributes/2"
# The names of a model folder's files and folders, for every script that writes or reads them.
CONFIG_FILE = "config.json"  # the recipe and sizes (train.py); copied beside exported models
HISTORY_FILE = "history.csv"
LOSS_CURVES_FILE = "loss_curves.png"
DENSITY_FILE = "latent_density.json"  # the fitted latent density (latent.py)
ATTRIBUTES_FILE = "attribute_directions.json"  # written by generate.py --mode attribute
LOCK_FILE = ".lock"  # held by the train.py process that writes the run
CHECKPOINT_DIR = "checkpoint"
BACKUP_DIR = "backup"  # inside CHECKPOINT_DIR
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"  # train.py's grids of decoded prior samples, one per epoch
RECONSTRUCTIONS_DIR = "reconstructions"  # and of validation reconstructions
GENERATED_DIR = "generated"  # generate.py's default output folder
# What train.py and generate.py write into a run folder that are not faces to train on (data.list_images).
RUN_ARTIFACTS = (CHECKPOINT_DIR, RECONSTRUCTIONS_DIR, SAMPLES_DIR, GENERATED_DIR, LOSS_CURVES_FILE)
REQUIRED_SIZES = ("latent_dim", "image_size", "channels")  # config.json keys every reader needs
# The loss's numerical floors, shared by vae.py (TensorFlow) and evaluate.py (numpy).
MIN_GAUSSIAN_SIGMA = 1e-3  # keeps log(sigma) finite when reconstructions become exact
BCE_EPSILON = 1e-6
BATCH_SIZE = 64  # images per encoder/decoder call: bounds memory on big inputs
LOAD_BATCH = 256  # image files loaded at a time by encode_files


def keras_file(part: str) -> str:
    return f"{part}.keras"


def onnx_file(part: str) -> str:
    return f"{part}.onnx"


# What a model folder is made of; no script writes its output over these.
MODEL_FILES = tuple(name(part) for name in (keras_file, onnx_file) for part in ("encoder", "decoder"))
MODEL_FOLDER_PARTS = (*MODEL_FILES, CONFIG_FILE, HISTORY_FILE, LOSS_CURVES_FILE, DENSITY_FILE, ATTRIBUTES_FILE,
                      LOCK_FILE, CHECKPOINT_DIR, TENSORBOARD_DIR, SAMPLES_DIR, RECONSTRUCTIONS_DIR)  # fmt: skip


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults unless None, off or given in the help; wraps paragraphs, keeps indented lines as written."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        lines = []
        for prose, block in itertools.groupby(text.splitlines(), key=lambda line: line[:1].strip() != ""):
            if prose:  # a paragraph, wrapped to the terminal
                block = textwrap.wrap(" ".join(block), width, initial_indent=indent, subsequent_indent=indent)
            lines += block
        return "\n".join(lines)


class RunFolderError(UserError):
    """A run folder that cannot be used."""


def check_architecture(image_size: int, filters: Sequence[int]) -> None:
    """Raise ValueError unless image_size halves cleanly once per encoder block."""
    if not filters:
        raise ValueError("--filters needs at least one value, e.g. 32,64,128,256")
    factor = 2 ** len(filters)
    if image_size % factor or image_size < factor:
        raise ValueError(
            f"image size {image_size} must be a multiple of 2^{len(filters)} = {factor} "
            f"for {len(filters)} encoder blocks; use e.g. --image-size {max(factor, 64)}"
        )


def read_config(run_dir: str | os.PathLike) -> dict:
    """config.json of a train.py run, checked for its format; `run_dir` is added to it."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist; give a run folder written by train.py")
    if not path.is_file():
        raise RunFolderError(f"{run_dir} has no config.json; give a run folder written by train.py")
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}); give a run folder written by train.py") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != RUN_FORMAT:
        raise RunFolderError(
            f"{path} is not a {RUN_FORMAT} config (format {found!r}); give a run folder written by train.py"
        )
    problems = [
        f"{key} is missing" if key not in config else f"{key} is {config[key]!r}, not a positive whole number"
        for key in REQUIRED_SIZES
        if not (type(config.get(key)) is int and config[key] > 0)
    ]
    if "crop" in config and not (type(config["crop"]) is int and config["crop"] >= 0):
        problems.append(f"crop is {config['crop']!r}, not a whole number of 0 or more")
    if problems:
        raise RunFolderError(f"{path}: {'; '.join(problems)}; restore the config.json train.py wrote for this run")
    # Settings older config.json files lack, with the value those runs used.
    added = {"train_split": "train", "lr_schedule": "constant", "lr_warmup_steps": 0, "decoder_filters": None,
             "adversarial": 0.0, "output_filters": 0, "adversarial_start": 0, "discriminator_filters": 64,
             "flip": False}  # fmt: skip
    config |= {key: value for key, value in added.items() if key not in config}
    if isinstance(config.get("mixed_precision"), bool):  # the setting, before the chosen policy was recorded
        config["mixed_precision"] = "on" if config["mixed_precision"] else "off"
    config["run_dir"] = str(run_dir)
    return config


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as temporary:
        temporary.write_text(text)


@contextlib.contextmanager
def native_start_up_lines_filtered() -> Iterator[None]:
    """TensorFlow's C++ start-up lines on fd 2 (logged twice, before its log settings apply), shown once, without
    the information lines TF_CPP_MIN_LOG_LEVEL hides nor CUDA's cuInit error on a machine without an NVIDIA driver."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (closed): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            hide_information = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") not in ("", "0")
            shown = {}
            for line in capture.read().decode(errors="replace").splitlines():
                native = re.match(r"([IWEF])\d{4} [\d:.]+\s+\d+ (.*)", line)
                if "absl::InitializeLog()" in line or (native and native[1] == "I" and hide_information):
                    continue
                if "failed call to cuInit" in line and not Path("/proc/driver/nvidia").exists():
                    continue
                shown.setdefault(native[2] if native else line, line)
            sys.stderr.writelines(f"{line}\n" for line in shown.values())
            sys.stderr.flush()


def import_keras():
    """`import keras`, with TensorFlow's start-up lines filtered."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ log: warnings and errors only
    with native_start_up_lines_filtered():
        import keras
        import tensorflow as tf

        tf.config.list_logical_devices()  # the first look at the devices, where CUDA logs its start-up
    return keras


def load_model(run_dir: str | os.PathLike, part: str, config: dict):
    """A run's encoder.keras or decoder.keras, loaded in safe_mode and checked against config.json."""
    keras = import_keras()
    path = Path(run_dir) / keras_file(part)
    if not path.is_file():
        raise RunFolderError(
            f"{run_dir} has no {path.name}; train.py writes it after each epoch, so let the run finish its first epoch"
        )
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many types for damaged or foreign archives
        raise RunFolderError(f"cannot load {path} ({first_line(error)}); re-run train.py for this run") from None
    size, channels, latent = int(config["image_size"]), int(config["channels"]), int(config["latent_dim"])
    image, code = (size, size, channels), (latent,)
    expected = (image, [code, code]) if part == "encoder" else (code, [image])
    found = (tuple(model.inputs[0].shape[1:]), [tuple(output.shape[1:]) for output in model.outputs])
    if found != expected:
        raise RunFolderError(
            f"{path} takes {found[0]} and gives {found[1]}, but config.json describes {expected[0]} -> {expected[1]}: "
            "the model files and config.json come from different runs; put back the config.json written with them"
        )
    return model


# --------------------------------------------------------------------------- model backends
class Backend:
    """A run's models as numpy functions of images float32 [N, H, W, C] in [0, 1]; subclasses run one batch."""

    kind: str  # "keras" or "onnx"

    def __init__(self, run_dir: Path, sizes: dict):
        self.run_dir = run_dir
        self.latent_dim, self.image_size, self.channels = (int(sizes[key]) for key in REQUIRED_SIZES)
        self.crop = int(sizes.get("crop", DEFAULT_CROP))
        self.model_kind = sizes.get("model", "vae")  # "vae" or "ae"
        self._encoder = None  # loaded on the first encode

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, log_var), each [N, latent_dim]."""
        images = np.asarray(images, dtype=np.float32)
        expected = (self.image_size, self.image_size, self.channels)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise RunFolderError(f"images of shape {images.shape[1:]} do not fit this model's input {expected}")
        parts = [self.encode_batch(batch) for batch in batches(images, BATCH_SIZE)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def decode(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise RunFolderError(
                f"latent vectors of shape {z.shape} do not fit this model's latent size {self.latent_dim}"
            )
        return np.concatenate([self.decode_batch(batch) for batch in batches(z, BATCH_SIZE)])


class KerasBackend(Backend):
    """encoder.keras / decoder.keras of a train.py run; sizes from its config.json."""

    kind = "keras"

    def __init__(self, run_dir: Path):
        self.config = read_config(run_dir)
        super().__init__(run_dir, self.config)
        self.decoder = load_model(run_dir, "decoder", self.config)  # imports Keras, which the ONNX path must not

    def encode_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._encoder is None:
            self._encoder = load_model(self.run_dir, "encoder", self.config)
        mu, log_var = self._encoder(images, training=False)
        return np.asarray(mu), np.asarray(log_var)

    def decode_batch(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self.decoder(z, training=False))


class OnnxBackend(Backend):
    """encoder.onnx / decoder.onnx on onnxruntime; sizes from their metadata. Imports neither TensorFlow nor Keras."""

    kind = "onnx"

    def __init__(self, run_dir: Path, threads: int = 0):
        self.run_dir, self.threads = run_dir, threads
        self.decoder, self.metadata = self.open("decoder")
        if self.metadata.get("value_range") != "0,1" or self.metadata.get("layout") != "NHWC":
            raise RunFolderError(
                f"{run_dir / onnx_file('decoder')} is not an NHWC model with values in [0, 1]; re-export it"
            )
        super().__init__(run_dir, self.metadata)
        config = read_config(run_dir) if (run_dir / CONFIG_FILE).is_file() else None  # ONNX-only folders may have none
        if config is not None and int(config["latent_dim"]) != self.latent_dim:
            raise RunFolderError(
                f"decoder.onnx has latent size {self.latent_dim} but {run_dir / 'config.json'} says "
                f"{config['latent_dim']}; re-export it: python export_onnx.py --run {run_dir}"
            )

    def open(self, part: str):
        """(session, metadata) of <run>/<part>.onnx, checked to be an exported `part`."""
        path = self.run_dir / onnx_file(part)
        if not path.is_file():
            raise RunFolderError(
                f"{self.run_dir} has no {path.name}; export it: python export_onnx.py --run {self.run_dir}"
            )
        try:
            session = inference.make_session(path, threads=self.threads)
            return session, inference.check_model(session, part, name=str(path))
        except (FileNotFoundError, ValueError) as error:
            raise RunFolderError(str(error)) from None

    def encode_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._encoder is None:
            self._encoder, metadata = self.open("encoder")
            mismatch = inference.pair_mismatch(self.metadata, metadata)
            if mismatch:
                raise RunFolderError(
                    f"encoder.onnx and decoder.onnx in {self.run_dir} come from different exports ({mismatch}); "
                    f"export both again: python export_onnx.py --run RUN --out {self.run_dir}"
                )
        return inference.encode(self._encoder, images)

    def decode_batch(self, z: np.ndarray) -> np.ndarray:
        return inference.decode(self.decoder, z)


def open_backend(run_dir: str | os.PathLike, kind: str | None = None, threads: int = 0) -> Backend:
    """A run's models: kind "keras", "onnx", or None to choose by what the folder holds."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist; train one with train.py --out {run_dir}")
    if kind is None and not any((run_dir / name).is_file() for name in (keras_file("decoder"), onnx_file("decoder"))):
        raise RunFolderError(
            f"{run_dir} has no decoder.keras or decoder.onnx; train.py writes the .keras files after "
            "each epoch, export_onnx.py the .onnx files"
        )
    kind = kind or ("keras" if (run_dir / keras_file("decoder")).is_file() else "onnx")
    return OnnxBackend(run_dir, threads) if kind == "onnx" else KerasBackend(run_dir)


def check_writable(path: str | os.PathLike, folder: bool, flag: str = "--out") -> Path:
    """Refuse, before any work, a `flag` path that cannot be written: a file where a folder is wanted
    (folder=True) or the reverse, a path below a file, or a folder that cannot be written in."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise RunFolderError(
            f"{flag} {path} is a {'file' if folder else 'folder'}; give a {'folder' if folder else 'file'} path"
        )
    existing = path if folder else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"{flag} {path} lies below {existing}, which is a file; give another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"{flag} {path}: {existing} is not writable (permission denied); give another {flag}")
    try:  # os.access lets root write anywhere, even where nothing can be created (/proc, a read-only mount)
        tempfile.TemporaryFile(dir=existing).close()  # Linux: an unnamed O_TMPFILE, nothing appears in the folder
    except OSError as error:
        raise RunFolderError(
            f"{flag} {path}: cannot write in {existing} ({error.strerror}); give another {flag}"
        ) from None
    return path


def is_model_folder(folder: Path) -> bool:
    """A train.py run or an exported folder: it holds a model file or a config.json of RUN_FORMAT."""
    if any((folder / name).is_file() for name in MODEL_FILES):
        return True
    try:
        return json.loads((folder / CONFIG_FILE).read_text()).get("format") == RUN_FORMAT
    except (OSError, ValueError, AttributeError):  # none, unreadable, or not a JSON object
        return False


def model_folder_part(path: str | os.PathLike) -> Path | None:
    """The part of a model folder (MODEL_FOLDER_PARTS) that `path` is or lies in, else None."""
    path = Path(path).resolve()
    for folder in path.parents:
        if is_model_folder(folder):
            first = path.relative_to(folder).parts[0]
            # Case-insensitive file systems (macOS, Windows) take Config.json for config.json.
            part = next((name for name in MODEL_FOLDER_PARTS if name.casefold() == first.casefold()), None)
            return None if part is None else folder / part
    return None


def check_output_path(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), own: Iterable[str | os.PathLike] = ()
) -> Path:
    """Refuse an output file over part of a model folder, or over an `inputs` file or a file in an `inputs` folder
    by any name (symlinks, hard links); files in `own` folders (earlier outputs) may be overwritten."""
    out = Path(path)
    if out.is_file():
        inputs = [Path(path) for path in inputs]
        for path in inputs:
            if path.is_file() and os.path.samefile(out, path):
                raise RunFolderError(f"--out {out} would overwrite the input {path}; give another --out")
        # An own folder that is a symbolic link (run/generated -> a data folder) is no own folder.
        own = [Path(folder).resolve() for folder in own if not Path(folder).is_symlink()]
        names = {out.resolve(), out.parent.resolve() / out.name}  # the file, and a symlink's own place
        status = out.stat()
        for folder in (path for path in inputs if path.is_dir()):
            root = folder.resolve()
            if any(within(name, root) and not any(within(name, mine) for mine in own) for name in names):
                raise RunFolderError(
                    f"--out {out} would overwrite a file of {folder}, which this command reads; give another --out"
                )
            if status.st_nlink > 1:  # a hard link: look for the file's other names in the folder
                linked = next((file for file in walk_files(root, own) if same_inode(file, status)), None)
                if linked is not None:
                    raise RunFolderError(
                        f"--out {out} would overwrite {linked}, which this command reads; give another --out"
                    )
    part = model_folder_part(out)
    if part is not None:
        raise RunFolderError(
            f"--out {out} would overwrite {part}, part of the model folder {part.parent}; give another --out"
        )
    return out


def within(path: Path, folder: Path) -> bool:
    """Whether path is or lies below folder, by any spelling the file system takes for it."""
    try:
        status = folder.stat()
    except OSError:
        return path == folder or folder in path.parents
    return any(candidate == folder or same_inode(candidate, status) for candidate in (path, *path.parents))


def same_inode(path: Path, status: os.stat_result) -> bool:
    try:
        return os.path.samestat(os.lstat(path), status)
    except OSError:  # removed meanwhile
        return False


def walk_files(folder: Path, skip: Sequence[Path]) -> Iterator[Path]:
    """Every file under `folder`, but for those under the `skip` folders (resolved paths)."""
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if (Path(root) / name).resolve() not in skip]
        yield from (Path(root) / name for name in files)


def load_decodable(paths: Sequence[Path], backend: Backend) -> tuple[np.ndarray, list[Path]]:
    """(faces [n, S, S, C] of the files that decode, the paths that do not), as training skips them."""
    faces, failed = [], []
    for path in paths:
        try:
            faces.append(load_face(path, backend.image_size, backend.channels, backend.crop))
        except (OSError, ValueError):
            failed.append(path)
    shape = (0, backend.image_size, backend.image_size, backend.channels)
    return (np.stack(faces) if faces else np.zeros(shape, np.float32)), failed


def duration_text(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


class Progress:
    """'LABEL N of M images, about T to go', in place on a terminal, else every `log_every` seconds; then the time."""

    def __init__(self, total: int, label: str, enabled: bool = True, log_every: float = 30.0):
        self.total, self.label, self.done, self.log_every = total, label, 0, log_every
        self.enabled, self.live = enabled, enabled and sys.stdout.isatty()
        self.started = self.logged = time.perf_counter()

    def add(self, count: int) -> None:
        self.done, now = self.done + count, time.perf_counter()
        elapsed = now - self.started
        left = elapsed / max(self.done, 1) * (self.total - self.done)
        to_go = f", about {duration_text(left)} to go" if elapsed > 5 else ""
        if self.live:
            print(f"\r{self.label} {self.done} of {self.total} images{to_go}\033[K", end="", flush=True)
        elif self.enabled and now - self.logged >= self.log_every:
            self.logged = now
            print(f"{self.label} {self.done} of {self.total} images{to_go}", flush=True)

    def close(self) -> None:
        if self.enabled:
            seconds = time.perf_counter() - self.started
            line = f"{self.label} {self.done} of {self.total} images in {seconds:.1f} s"
            print(f"\r{line}\033[K" if self.live else line)


def encode_files(
    paths: Sequence[Path], backend: Backend, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, list[Path]]:
    """(posterior means [N, D], the N files that decode): the others are skipped with a warning, as
    training skips them. progress(count) is called after each LOAD_BATCH."""
    parts, kept, skipped = [], [], []
    for batch in batches(paths, LOAD_BATCH):
        faces, failed = load_decodable(batch, backend)
        skipped += failed
        kept += [path for path in batch if path not in failed]
        if len(faces):
            parts.append(backend.encode(faces)[0])
        if progress is not None:
            progress(len(faces))
    if skipped:
        print(f"warning: skipped {len(skipped)} image(s) that could not be decoded, e.g. {skipped[0]}", file=sys.stderr)
    if not parts:
        raise RunFolderError(f"none of the {len(paths)} image files could be decoded, e.g. {paths[0]}")
    return np.concatenate(parts), kept


if __name__ == "__main__":
    not_a_script(__file__)
