"""The run folder: config.json's format tag, settings and reader, the model loaders, atomic text
writes, and the --help formatter the scripts share.

train.py writes config.json; generate.py, export_onnx.py, evaluate.py and latent.py open a
run's models through a backend: `KerasBackend` (encoder.keras / decoder.keras of a train.py
run) or `OnnxBackend` (encoder.onnx / decoder.onnx of export_onnx.py, on onnxruntime). Kept
free of TensorFlow (json and numpy only; Keras is imported when a Keras model is loaded) so the
ONNX inference path can read run folders too. Not meant to be run by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from images import DEFAULT_CROP, atomic_write, load_face

RUN_FORMAT = "celeba-vae-run/1"
REQUIRED_SIZES = ("latent_dim", "image_size", "channels")  # config.json keys every reader needs
# The choices of config.json's model settings and the recipe train.py's flags default to (by
# their config.json names). Here rather than in vae.py so that train.py checks its flags
# without importing TensorFlow.
RECONSTRUCTION_LOSSES = ("mse", "bce", "gaussian")
UPSAMPLING_MODES = ("nearest", "transpose")
PRECISION_SETTINGS = ("auto", "on", "off")  # --mixed-precision; config.json records the policy chosen
PRECISION_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
DEFAULT_FILTERS = (32, 64, 128, 256)
DEFAULT_RECIPE = {
    "model": "vae",
    "latent_dim": 128,
    "image_size": 64,
    "channels": 3,
    "filters": list(DEFAULT_FILTERS),
    "hidden_units": 512,
    "upsampling": "nearest",
    "reconstruction": "mse",
    "beta": 0.25,
    "beta_warmup_steps": 0,
    "beta_cycle_steps": 0,
    "epochs": 20,
    "batch_size": 64,
    "learning_rate": 2e-3,
    "lr_schedule": "cosine",
    "lr_warmup_steps": 100,
    "ema": 0.0,
    "seed": 0,
}
BATCH_SIZE = 64  # images per encoder/decoder call: bounds memory on big inputs
LOAD_BATCH = 256  # image files loaded at a time by encode_files


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none (None / off) or the help text already gives
    one. In descriptions and epilogs, paragraphs are wrapped and indented lines (examples) are
    kept as written."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        return "\n".join(
            line
            if line[:1].isspace() or not line
            else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
            for line in text.splitlines()
        )


class RunFolderError(ValueError):
    """A run folder that cannot be used, reported as one line that says what to do."""


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
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist; give a run folder written by train.py")
    if not path.is_file():
        raise RunFolderError(f"{run_dir} has no config.json; give a run folder written by train.py")
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}); give a run folder written by train.py") from None
    if not isinstance(config, dict) or config.get("format") != RUN_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
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
    config["run_dir"] = str(run_dir)
    return config


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically: a temporary file in the same folder renamed into place,
    so a killed process never leaves a half-written config, history or cache file."""
    with atomic_write(path) as temporary:
        temporary.write_text(text)


def load_model(run_dir: str | os.PathLike, part: str, config: dict):
    """encoder.keras or decoder.keras of a run (part "encoder" or "decoder"), loaded with
    safe_mode on and checked against config.json's sizes. Imports Keras only when called."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TensorFlow's C++ start-up chatter
    import keras

    path = Path(run_dir) / f"{part}.keras"
    if not path.is_file():
        raise RunFolderError(
            f"{run_dir} has no {path.name}; train.py writes it after each epoch, so let the run finish its first epoch"
        )
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many types for damaged or foreign archives
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise RunFolderError(f"cannot load {path} ({reason}); re-run train.py for this run") from None
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
class Backend(Protocol):
    """A run's models as numpy functions; images are float32 [N, H, W, C] in [0, 1]."""

    run_dir: Path
    kind: str  # "keras" or "onnx"
    latent_dim: int
    image_size: int
    channels: int
    crop: int
    model_kind: str  # "vae" or "ae"

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...  # (mu, log_var) [N, D]

    def decode(self, z: np.ndarray) -> np.ndarray: ...


def check_latents(z: np.ndarray, latent_dim: int) -> np.ndarray:
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise RunFolderError(f"latent vectors of shape {z.shape} do not fit this model's latent size {latent_dim}")
    return z


def check_images(images: np.ndarray, backend: Backend) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    expected = (backend.image_size, backend.image_size, backend.channels)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise RunFolderError(f"images of shape {images.shape[1:]} do not fit this model's input {expected}")
    return images


class KerasBackend:
    """encoder.keras / decoder.keras of a train.py run; sizes from its config.json."""

    kind = "keras"

    def __init__(self, run_dir: Path):
        config = read_config(run_dir)
        self.run_dir = run_dir
        self.latent_dim = int(config["latent_dim"])
        self.image_size = int(config["image_size"])
        self.channels = int(config["channels"])
        self.crop = int(config.get("crop", DEFAULT_CROP))
        self.model_kind = config.get("model", "vae")
        self.config = config
        self._encoder = None
        # Keras (and TensorFlow) are imported here only: the ONNX path must run without them.
        self.decoder = load_model(run_dir, "decoder", config)

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = check_images(images, self)
        if self._encoder is None:
            self._encoder = load_model(self.run_dir, "encoder", self.config)
        parts = [self._encoder(images[i : i + BATCH_SIZE], training=False) for i in range(0, len(images), BATCH_SIZE)]
        mu = np.concatenate([np.asarray(p[0]) for p in parts])
        log_var = np.concatenate([np.asarray(p[1]) for p in parts])
        return mu, log_var

    def decode(self, z: np.ndarray) -> np.ndarray:
        z = check_latents(z, self.latent_dim)
        return np.concatenate(
            [np.asarray(self.decoder(z[i : i + BATCH_SIZE], training=False)) for i in range(0, len(z), BATCH_SIZE)]
        )


class OnnxBackend:
    """encoder.onnx / decoder.onnx (export_onnx.py) on onnxruntime's CPU provider, through
    export_onnx's numpy-only helpers; sizes from the files' metadata. Imports neither
    TensorFlow nor Keras."""

    kind = "onnx"

    def __init__(self, run_dir: Path, threads: int = 0):
        self.run_dir = run_dir
        self.threads = threads
        self._encoder = None
        self.decoder, metadata = self.open("decoder")
        if metadata.get("value_range") != "0,1" or metadata.get("layout") != "NHWC":
            raise RunFolderError(f"{run_dir / 'decoder.onnx'} is not an NHWC model with values in [0, 1]; re-export it")
        self.metadata = metadata
        self.latent_dim = int(metadata["latent_dim"])
        self.image_size = int(metadata["image_size"])
        self.channels = int(metadata["channels"])
        self.crop = int(metadata.get("crop", DEFAULT_CROP))
        self.model_kind = metadata.get("model", "vae")
        config = (
            read_config(run_dir) if (run_dir / "config.json").is_file() else None
        )  # ONNX-only folders may have none
        if config is not None and int(config["latent_dim"]) != self.latent_dim:
            raise RunFolderError(
                f"decoder.onnx has latent size {self.latent_dim} but {run_dir / 'config.json'} says "
                f"{config['latent_dim']}; re-export it: python export_onnx.py --run {run_dir}"
            )

    def open(self, part: str):
        """(session, metadata) of <run>/<part>.onnx, checked to be an exported `part`."""
        import export_onnx

        path = self.run_dir / f"{part}.onnx"
        if not path.is_file():
            raise RunFolderError(
                f"{self.run_dir} has no {part}.onnx; export it: python export_onnx.py --run {self.run_dir}"
            )
        try:
            session = export_onnx.make_session(path, threads=self.threads)
            return session, export_onnx.check_model(session, part, name=str(path))
        except (FileNotFoundError, ValueError) as error:
            raise RunFolderError(str(error)) from None

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import export_onnx

        images = check_images(images, self)
        if self._encoder is None:
            self._encoder, metadata = self.open("encoder")
            mismatch = export_onnx.pair_mismatch(self.metadata, metadata)
            if mismatch:
                raise RunFolderError(
                    f"encoder.onnx and decoder.onnx in {self.run_dir} come from different exports ({mismatch}); "
                    f"export both again: python export_onnx.py --run RUN --out {self.run_dir}"
                )
        parts = [
            export_onnx.encode(self._encoder, images[i : i + BATCH_SIZE]) for i in range(0, len(images), BATCH_SIZE)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def decode(self, z: np.ndarray) -> np.ndarray:
        import export_onnx

        z = check_latents(z, self.latent_dim)
        return np.concatenate(
            [export_onnx.decode(self.decoder, z[i : i + BATCH_SIZE]) for i in range(0, len(z), BATCH_SIZE)]
        )


def default_backend(run_dir: Path) -> str:
    """ "keras" for a train.py run folder with its .keras files, "onnx" for an exported folder."""
    return "keras" if (Path(run_dir) / "decoder.keras").is_file() else "onnx"


def open_backend(run_dir: str | os.PathLike, kind: str | None = None, threads: int = 0) -> Backend:
    """A run's models: kind "keras", "onnx", or None to choose by what the folder holds."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist; train one with train.py --out {run_dir}")
    if kind is None and not any((run_dir / f"decoder.{suffix}").is_file() for suffix in ("keras", "onnx")):
        raise RunFolderError(
            f"{run_dir} has no decoder.keras or decoder.onnx; train.py writes the .keras files after "
            "each epoch, export_onnx.py the .onnx files"
        )
    kind = kind or default_backend(run_dir)
    return OnnxBackend(run_dir, threads) if kind == "onnx" else KerasBackend(run_dir)


def check_writable(path: str | os.PathLike, folder: bool, flag: str = "--out") -> Path:
    """Refuse, before any work and touching nothing, a `flag` path that cannot be written: a file
    where a folder is wanted (folder=True) or the reverse, a path below a file, or a folder
    without write permission (files are written beside their target, then renamed)."""
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


def load_faces(paths: Sequence[Path], backend: Backend) -> np.ndarray:
    """float32 [N, S, S, C] faces, cropped and resized as in training."""
    try:
        return np.stack([load_face(p, backend.image_size, backend.channels, backend.crop) for p in paths])
    except (FileNotFoundError, ValueError) as error:
        raise RunFolderError(f"{error}; check the image paths given") from None


def load_decodable(paths: Sequence[Path], backend: Backend) -> tuple[np.ndarray, list[Path]]:
    """Faces [n, S, S, C] of the files that decode, loaded as training loads them, and the
    paths that could not be decoded (skipped, as training skips them)."""
    faces, failed = [], []
    for path in paths:
        try:
            faces.append(load_face(path, backend.image_size, backend.channels, backend.crop))
        except (OSError, ValueError):
            failed.append(path)
    shape = (0, backend.image_size, backend.image_size, backend.channels)
    return (np.stack(faces) if faces else np.zeros(shape, np.float32)), failed


class Progress:
    """'LABEL N of M images': rewritten in place on a terminal; in a log file a line every
    `log_every` seconds, so long work shows it is alive, and a final line with the time taken."""

    def __init__(self, total: int, label: str, enabled: bool = True, log_every: float = 30.0):
        self.total, self.label, self.done, self.log_every = total, label, 0, log_every
        self.enabled, self.live = enabled, enabled and sys.stdout.isatty()
        self.started = self.logged = time.perf_counter()

    def add(self, count: int) -> None:
        self.done += count
        if self.live:
            print(f"\r{self.label} {self.done} of {self.total} images", end="", flush=True)
        elif self.enabled and time.perf_counter() - self.logged >= self.log_every:
            self.logged = time.perf_counter()
            print(f"{self.label} {self.done} of {self.total} images", flush=True)

    def close(self) -> None:
        if self.enabled:
            seconds = time.perf_counter() - self.started
            print(f"{chr(13) if self.live else ''}{self.label} {self.done} of {self.total} images in {seconds:.1f} s")


def encode_files(
    paths: Sequence[Path], backend: Backend, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, list[Path]]:
    """Posterior means [N, D] of the files that decode, and those N files: corrupt or truncated
    files are skipped, as training skips them, with a warning naming them. Faces are loaded
    LOAD_BATCH at a time to bound memory; progress(count) is called after each batch."""
    parts, kept, skipped = [], [], []
    for start in range(0, len(paths), LOAD_BATCH):
        batch = paths[start : start + LOAD_BATCH]
        faces, failed = load_decodable(batch, backend)
        skipped += failed
        failed = set(failed)
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
