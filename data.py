"""CelebA (or any folder of faces) -> tf.data pipelines of float32 images in [0, 1].

Layouts: Kaggle's (img_align_celeba/ with list_eval_partition.csv), the CelebA site's (Img/, Eval/, Anno/),
or any folder of faces (searched recursively, skipping run folders; an 80/10/10 split by file name hash).
Pipeline: check files -> decode and crop -> area resize -> cache -> shuffle -> batch, cut to a multiple of the
replicas (docs/training.md, "Data").

    python data.py --data ./celeba     # what is found in a folder
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from errors import UserError, run_main
from image_files import CONVERT_HINT, FORMATS_TEXT, IMAGE_SUFFIXES, OTHER_IMAGE_SUFFIXES, check_image
from images import CELEBA_WIDTH, DEFAULT_CROP, read_pixels
from runs import CONFIG_FILE, RUN_ARTIFACTS, is_model_folder

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger("data")

CELEBA_ATTRIBUTES = (  # noqa: SIM905 (a list of 40 names, in the order of CelebA's attribute files)
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair "
    "Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face "
    "Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair "
    "Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
SPLITS = {"train": 0, "validation": 1, "test": 2}
DECODE_VERSION = 2  # in file caches' names: raise it when decode_face's pixels change, so old caches go unread
MEMORY_CACHE_OVERHEAD = 1.2  # resident bytes per byte of cached pixels (docs/training.md)
MEMORY_CACHE_SHARE = 0.75  # of the available memory; the rest is for TensorFlow, the model and the batches
FILE_CACHE_ENTRY_BYTES = 72  # per image: its index entry, held twice while TensorFlow merges the index
FILE_CACHE_FILES_BYTES = 4 * 4096  # per cache: a partly used last block in each of its four files
KAGGLE_HINT = (
    "get CelebA from Kaggle: `kaggle datasets download -d jessicali9530/celeba-dataset && "
    "unzip celeba-dataset.zip -d celeba`, then pass --data ./celeba"
)
LAYOUTS_HELP = (
    "expected one of: Kaggle layout (<root>/img_align_celeba/img_align_celeba/*.jpg + list_eval_partition.csv), "
    "original layout (<root>/Img/img_align_celeba/*.jpg + Eval/list_eval_partition.txt), "
    f"or a plain folder of {FORMATS_TEXT} faces"
)
REPLACE_HINT = "replace it with the file from the CelebA download"
ATTRIBUTES_FIX = f"{REPLACE_HINT}, or delete it (only attribute directions need it)"
IDENTITIES_FIX = f"{REPLACE_HINT}, or delete it (only --identity needs it)"
ATTRIBUTE_LABELS = {"1", "-1"}  # CelebA's labels: present or absent, nothing else


class DataError(UserError):
    """A problem with the user's data, reported as one line that says what to do."""


@dataclass
class Dataset:
    """A data folder's files. Annotations load on first use: a damaged one stops only attributes or --identity."""

    root: Path
    layout: str  # "kaggle", "original" or "folder"
    files: list[Path]  # every image, sorted by path
    partition: dict[str, int] | None = None  # file name -> 0 train / 1 validation / 2 test
    attribute_file: Path | None = None
    identity_file: Path | None = None
    other_formats: list[Path] = field(default_factory=list)  # image files training cannot read

    @cached_property
    def attributes(self) -> dict[str, np.ndarray]:
        """file name -> int8[40] of +1/-1."""
        return {} if self.attribute_file is None else read_attributes(self.attribute_file)

    @cached_property
    def identities(self) -> dict[str, int]:
        """file name -> person id."""
        return {} if self.identity_file is None else read_identities(self.identity_file)

    def split(self, name: str) -> list[Path]:
        """Files of a split ("train", "validation", "test" or "all")."""
        if name == "all":
            return list(self.files)
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose train, validation, test or all")
        split_of = hash_split if self.partition is None else self.partition.get
        return [p for p in self.files if split_of(p.name) == SPLITS[name]]

    def describe(self) -> str:
        counts = ", ".join(f"{name} {len(self.split(name))}" for name in SPLITS)
        split_kind = "official partition" if self.partition is not None else "hash split"
        parts = [f"{len(self.files)} images ({counts}; {split_kind})"]
        for name in ("attributes", "identities"):
            try:
                parts.append(f"{len(getattr(self, name))} with {name}")
            except DataError as error:  # reported, not raised: only some uses need them
                parts.append(f"{name} unusable: {error}")
        if self.other_formats:
            parts.append(f"{len(self.other_formats)} image files in other formats skipped")
        return shown(f"{self.layout} layout at {self.root}: {', '.join(parts)}")


def shown(text: str | os.PathLike) -> str:
    """Text naming files, printable in any locale: a file name's bytes that are not UTF-8 appear as \\xNN."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def hash_split(file_name: str) -> int:
    """Deterministic 80/10/10 split (0/1/2) from a file name's bytes, stable across machines."""
    bucket = int(hashlib.md5(file_name.encode("utf-8", "surrogateescape")).hexdigest(), 16) % 10
    return 0 if bucket < 8 else (1 if bucket == 8 else 2)


def attribute_index(name: str) -> int:
    lookup = {a.lower(): i for i, a in enumerate(CELEBA_ATTRIBUTES)}
    if name.lower() not in lookup:
        raise DataError(f"unknown attribute {name!r}; valid names: {', '.join(CELEBA_ATTRIBUTES)}")
    return lookup[name.lower()]


# --------------------------------------------------------------------------- annotation files
def read_rows(path: Path, fix: str = REPLACE_HINT) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank lines of a .csv or a whitespace-separated annotation file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise DataError(f"{path} is not UTF-8 text (byte {error.start} is {byte:#04x}); {fix}") from None
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror}); {fix}") from None
    lines = text.splitlines()
    split = csv.reader(lines, skipinitialspace=True) if path.suffix == ".csv" else (line.split() for line in lines)
    return ((number, fields) for number, fields in enumerate(split, 1) if any(fields))


def read_partition(path: Path) -> dict[str, int]:
    """list_eval_partition.csv (with a header) or .txt: file name -> 0 train / 1 validation / 2 test."""
    rows = read_rows(path)
    if path.suffix == ".csv":
        _, header = next(rows, (0, None))
        if header is None:
            raise DataError(f"{path} is empty; {REPLACE_HINT}")
        if header != ["image_id", "partition"]:
            raise DataError(
                f"{path} starts with {','.join(header)!r}, not the header 'image_id,partition'; {REPLACE_HINT}"
            )
    partition = {}
    for number, fields in rows:
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(
                f"{path} line {number}: {' '.join(fields)!r} is not a file name and a partition 0 (train), "
                f"1 (validation) or 2 (test); {REPLACE_HINT}"
            )
        partition[fields[0]] = int(fields[1])
    if not partition:
        raise DataError(f"{path} lists no images; {REPLACE_HINT}")
    return partition


def read_attributes(path: Path) -> dict[str, np.ndarray]:
    """list_attr_celeba.csv (a header "image_id,<names>") or .txt (a count line, a header): name -> int8[40] of -1/1."""
    rows = read_rows(path, ATTRIBUTES_FIX)
    if path.suffix == ".csv":
        _, header = next(rows, (0, None))
        if header is None:
            raise DataError(f"{path} is empty; {ATTRIBUTES_FIX}")
        header = header[1:]
    else:
        (_, count), (_, header) = next(rows, (0, [])), next(rows, (0, []))
        if len(count) != 1 or not count[0].isdecimal() or not header:
            raise DataError(f"{path} does not start with an image count line and a header line; {ATTRIBUTES_FIX}")
    if header != CELEBA_ATTRIBUTES:
        raise DataError(f"{path}: attribute header does not list the 40 CelebA attributes in order; {ATTRIBUTES_FIX}")
    names, labels = [], []
    for number, fields in rows:
        if len(fields) != 41:
            raise DataError(
                f"{path} line {number}: {len(fields) - 1} labels for {fields[0]}, expected 40; {ATTRIBUTES_FIX}"
            )
        if not ATTRIBUTE_LABELS.issuperset(fields[1:]):
            column, value = next((i, v) for i, v in enumerate(fields[1:]) if v not in ATTRIBUTE_LABELS)
            raise DataError(
                f"{path} line {number}: {CELEBA_ATTRIBUTES[column]} of {fields[0]} is {value!r}, but CelebA labels "
                f"are -1 or 1; {ATTRIBUTES_FIX}"
            )
        names.append(fields[0])
        labels.extend(fields[1:])
    # Every label is "1" or "-1", so its length says which: 3 - 2 * length is 1 or -1.
    values = (3 - 2 * np.fromiter(map(len, labels), np.int8, len(labels))).reshape(len(names), 40)
    return dict(zip(names, values, strict=True))


def read_identities(path: Path) -> dict[str, int]:
    """identity_CelebA.txt: file name -> person id."""
    identities = {}
    for number, fields in read_rows(path, IDENTITIES_FIX):
        if len(fields) != 2 or not fields[1].isdecimal():
            raise DataError(
                f"{path} line {number}: {' '.join(fields)!r} is not a file name and a person number; {IDENTITIES_FIX}"
            )
        identities[fields[0]] = int(fields[1])
    return identities


# --------------------------------------------------------------------------- layout detection
def list_images(folder: Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """(image files training reads, image files of OTHER_IMAGE_SUFFIXES) in a folder, sorted. Recursive
    listing skips the RUN_ARTIFACTS of model folders, so their grids never become faces to train on."""
    wanted = IMAGE_SUFFIXES + OTHER_IMAGE_SUFFIXES
    if not recursive:  # the fast path for CelebA: scandir's entries know their type without a stat
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if os.path.splitext(e.name)[1].lower() in wanted and e.is_file()]
        found = [folder / name for name in sorted(names)]
    else:
        models = [config.parent for config in folder.rglob(CONFIG_FILE) if is_model_folder(config.parent)]
        artifacts = {model / name for model in models for name in RUN_ARTIFACTS}
        paths = (p for p in folder.rglob("*") if p.suffix.lower() in wanted and p.is_file())
        found = sorted(p for p in paths if artifacts.isdisjoint((p, *p.parents)))
    images = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, [p for p in found if p.suffix.lower() not in IMAGE_SUFFIXES]


# The files read beside the images, by layout: partition, attributes, identities.
ANNOTATIONS = {
    "kaggle": ("list_eval_partition.csv", "list_attr_celeba.csv", "identity_CelebA.txt"),
    "original": ("Eval/list_eval_partition.txt", "Anno/list_attr_celeba.txt", "Anno/identity_CelebA.txt"),
    "folder": ("identity_CelebA.txt",),
}


def find_dataset(path: str | os.PathLike) -> Dataset:
    """Detect the layout under `path` and read its file list and partition."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {LAYOUTS_HELP}; {KAGGLE_HINT}")

    nested = root / "img_align_celeba" / "img_align_celeba"  # as Kaggle's archive unpacks
    kaggle_images = nested if nested.is_dir() else nested.parent
    original_images = root / "Img" / "img_align_celeba"
    kaggle, original = (tuple(root / name for name in ANNOTATIONS[layout]) for layout in ("kaggle", "original"))
    if kaggle_images.is_dir() and kaggle[0].is_file():
        layout, folder, partition, annotations = "kaggle", kaggle_images, read_partition(kaggle[0]), kaggle[1:]
    elif original_images.is_dir() and original[0].is_file():
        layout, folder, partition, annotations = "original", original_images, read_partition(original[0]), original[1:]
    else:
        layout, folder, partition, annotations = "folder", root, None, (None, root / ANNOTATIONS["folder"][0])
    files, others = list_images(folder, recursive=layout == "folder")
    attribute_file, identity_file = (path if path and path.is_file() else None for path in annotations)
    dataset = Dataset(root, layout, files, partition, attribute_file, identity_file, others)
    if others:
        suffixes = ", ".join(sorted({p.suffix.lower() for p in others}))
        log.warning(
            f"skipped {len(others)} image files in formats training does not read ({suffixes}), "
            f"e.g. {shown(others[0])}; {CONVERT_HINT}"
        )
    if not dataset.files:
        raise DataError(f"no image files found under {root} ({layout} layout); {LAYOUTS_HELP}; {KAGGLE_HINT}")
    return dataset


# --------------------------------------------------------------------------- file checks
def is_readable_image(path: Path) -> bool:
    return check_image(path)[0] is None


def usable_files(paths: Sequence[Path]) -> list[Path]:
    return checked_files(paths)[0]


def checked_files(paths: Sequence[Path]) -> tuple[list[Path], list[bool]]:
    """(the paths that pass image_files' check, whether TensorFlow decodes each: else Pillow); warns of the others."""
    checks = [(path, *check_image(path)) for path in paths]  # path, problem or None, whether TensorFlow decodes it
    bad = [f"{shown(path)} ({problem})" for path, problem, _ in checks if problem is not None]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        log.warning(
            "skipped %d of %d image files that cannot be decoded: %s%s", len(bad), len(paths), "; ".join(bad[:5]), more
        )
    good = [(path, native) for path, problem, native in checks if problem is None]
    return [path for path, _ in good], [native for _, native in good]


# --------------------------------------------------------------------------- cache sizes
def available_memory(root: Path = Path("/")) -> int | None:
    """Bytes of memory this process may still take: MemAvailable, or less where a memory cgroup limit (v2 or
    v1) of this process's cgroup or one above leaves less; None where neither is known. `root`: for tests."""
    headroom, cgroups = [], []
    with contextlib.suppress(OSError):
        meminfo = (root / "proc/meminfo").read_text()
        headroom = [int(kb) * 1024 for kb in re.findall(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)]
        cgroups = (root / "proc/self/cgroup").read_text().splitlines()
    for line in cgroups:  # "0::/path" for v2, "4:memory:/path" for v1
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mount, max_file, used_file = root / "sys/fs/cgroup", "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            mount, max_file, used_file = root / "sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        parts = Path(path).relative_to("/").parts
        for depth in range(len(parts), -1, -1):  # the process's own cgroup, then its parents
            level = mount.joinpath(*parts[:depth])
            with contextlib.suppress(OSError, ValueError):  # no such files here, or a limit of "max"
                headroom.append(int((level / max_file).read_text()) - int((level / used_file).read_text()))
    return min(headroom) if headroom else None


def check_memory_cache(count: int, image_size: int, channels: int) -> None:
    """Refuse a memory cache that would not fit, rather than be killed halfway through an epoch."""
    needed, available = memory_cache_bytes(count, image_size, channels), available_memory()
    if not fits_in_memory(needed, available):
        raise DataError(
            f"caching {count} decoded {image_size}x{image_size} images in memory takes about {size_text(needed)}, "
            f"but only {size_text(available)} is available; cache them in files instead with --cache DIR "
            f"(about {size_text(file_cache_bytes(count, image_size, channels))} of disk), or use --cache none or "
            "fewer images (--limit)"
        )


def memory_cache_bytes(count: int, image_size: int, channels: int) -> float:
    return count * image_size * image_size * channels * MEMORY_CACHE_OVERHEAD


def fits_in_memory(needed: float, available: int | None) -> bool:
    """Whether `needed` bytes fit in MEMORY_CACHE_SHARE of the `available` memory (None: unknown, taken to fit)."""
    return available is None or needed <= MEMORY_CACHE_SHARE * available


def file_cache_bytes(count: int, image_size: int, channels: int) -> int:
    return count * (image_size * image_size * channels + FILE_CACHE_ENTRY_BYTES)


def free_disk_space(folder: str | os.PathLike) -> int:
    """Bytes free for this process on the file system of `folder` (or of its nearest existing parent)."""
    existing = next(path for path in (Path(folder), *Path(folder).absolute().parents) if path.exists())
    return shutil.disk_usage(existing).free


def file_cache_needs(
    cache_dir: str, file_lists: Sequence[Sequence[Path]], image_size: int, channels: int, crop: int
) -> tuple[int, int]:
    """(images, bytes) still to be written to `cache_dir` for the file caches of these file lists."""
    prefixes = [file_cache_prefix(cache_dir, files, image_size, channels, crop) for files in file_lists]
    missing = [files for files, prefix in zip(file_lists, prefixes, strict=True) if not file_cache_is_complete(prefix)]
    count = sum(map(len, missing))
    return count, file_cache_bytes(count, image_size, channels) + len(missing) * FILE_CACHE_FILES_BYTES


def check_file_cache(
    cache_dir: str, file_lists: Sequence[Sequence[Path]], image_size: int, channels: int, crop: int
) -> None:
    """Refuse file caches (one per make_dataset) that would not fit on the disk, rather than stop when it is full."""
    count, needed = file_cache_needs(cache_dir, file_lists, image_size, channels, crop)
    free = free_disk_space(cache_dir)
    if needed <= free:
        return
    in_memory = memory_cache_bytes(sum(map(len, file_lists)), image_size, channels)
    fits = fits_in_memory(in_memory, available_memory())
    memory = f", use --cache memory (about {size_text(in_memory)}, which fits in memory)" if fits else ""
    raise DataError(
        f"caching {count} decoded {image_size}x{image_size} images in files under {cache_dir} takes about "
        f"{size_text(needed)}, but only {size_text(free)} is free there; free some space, give another --cache "
        f"folder{memory}, use --cache none, or train on fewer images (--limit)"
    )


def size_text(count: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count / 1e3:.0f} kB"


# --------------------------------------------------------------------------- decoding
def crop_window(height: tf.Tensor, width: tf.Tensor, crop: int) -> tf.Tensor:
    """[top, left, side, side] of the central square crop (images.crop_box), as int32 tensors."""
    import tensorflow as tf

    short_side = tf.minimum(height, width)
    scaled = tf.cast(tf.round(crop * tf.cast(short_side, tf.float32) / CELEBA_WIDTH), tf.int32)
    side = tf.clip_by_value(scaled, 1, short_side) if crop > 0 else short_side
    return tf.stack([(height - side) // 2, (width - side) // 2, side, side])


def decode_face(path: tf.Tensor, native: tf.Tensor, image_size: int, channels: int, crop: int) -> tf.Tensor:
    """A file path (bytes) -> uint8 [S, S, C] as images.load_face does; `native`: TensorFlow decodes, else Pillow."""
    import tensorflow as tf

    def cropped(image):
        top, left, side, _ = tf.unstack(crop_window(tf.shape(image)[0], tf.shape(image)[1], crop))
        return image[top : top + side, left : left + side]

    def decode_jpeg(contents):
        # Only the crop window, and a column more each side: libjpeg upsamples the colour of a cropped decode's
        # edge columns as at the image's edges. INTEGER_ACCURATE: libjpeg's default IDCT, which Pillow uses.
        shape = tf.io.extract_jpeg_shape(contents)
        top, left, side, _ = tf.unstack(crop_window(shape[0], shape[1], crop))
        start, stop = tf.maximum(left - 1, 0), tf.minimum(left + side + 1, shape[1])
        window = tf.stack([top, start, side, stop - start])
        image = tf.io.decode_and_crop_jpeg(contents, window, channels=3, dct_method="INTEGER_ACCURATE")
        return image[:, left - start : left - start + side]

    def decode_native():
        contents = tf.io.read_file(path)
        return tf.cond(
            tf.io.is_jpeg(contents),
            lambda: decode_jpeg(contents),
            lambda: cropped(tf.io.decode_png(contents, channels=3)),
        )

    def decode_with_pillow():
        pixels = tf.numpy_function(lambda name: read_pixels(os.fsdecode(name)), [path], tf.uint8, stateful=False)
        return cropped(tf.ensure_shape(pixels, [None, None, 3]))

    image = tf.cond(native, decode_native, decode_with_pillow)
    # Area averaging antialiases a downscale, and is faster in tf.data than antialiased bilinear.
    image = tf.image.resize(image, (image_size, image_size), method="area")
    if channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def make_dataset(
    files: Sequence[Path],
    image_size: int = 64,
    channels: int = 3,
    batch_size: int = 64,
    crop: int = DEFAULT_CROP,
    cache: str = "memory",
    **stream: object,
) -> tf.data.Dataset:
    """Batches of float32 [B, S, S, C] images in [0, 1] of `files`: decoded_images, then batched(**stream)."""
    decoded, readable = decoded_images(files, image_size, channels, crop, cache)
    return batched(decoded, len(readable), batch_size, **stream)


def decoded_images(
    files: Sequence[Path], image_size: int = 64, channels: int = 3, crop: int = DEFAULT_CROP, cache: str = "memory"
) -> tuple[tf.data.Dataset, list[Path]]:
    """(uint8 [S, S, C] faces of the files that pass the check, in their order; those files). cache: "memory",
    "none", or a folder for file caches (reused by later runs); every stream batched from the faces shares it."""
    import tensorflow as tf

    readable, native = checked_files(files)
    if not readable:
        raise DataError("no readable images left to train on; check the files under --data")
    # Paths as bytes: a file name that is not UTF-8 reaches TensorFlow as it is on disk.
    dataset = tf.data.Dataset.from_tensor_slices(([os.fsencode(p) for p in readable], native))
    dataset = dataset.map(
        lambda path, native: decode_face(path, native, image_size, channels, crop), num_parallel_calls=tf.data.AUTOTUNE
    )
    # For files that pass the check but still fail to decode (TensorFlow only logs its own message).
    dataset = dataset.ignore_errors(log_warning=True)
    if cache == "memory":
        dataset = dataset.cache()
    elif cache != "none":
        prefix = file_cache_prefix(cache, files, image_size, channels, crop)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        remove_partial_file_cache(prefix)  # what a killed run or a full disk left half-written
        dataset = dataset.cache(str(prefix))
    return dataset, readable


def batched(
    decoded: tf.data.Dataset,
    count: int,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
    repeat: bool = False,
    skip_batches: int = 0,
    flip: bool = False,
    replicas: int = 1,
) -> tf.data.Dataset:
    """Batches of float32 images in [0, 1] of the `count` decoded images. repeat: forever, in passes of whole
    batches. skip_batches: start this many batches into the seeded stream, so that a resumed run sees the batches
    an uninterrupted one would have seen. flip: mirror each image left to right with probability 1/2, seeded.
    replicas: each batch cut to a multiple of them, the empty ones dropped (see steps_per_pass)."""
    import tensorflow as tf

    def batches(_) -> tf.data.Dataset:
        stream = decoded
        if shuffle:
            stream = stream.shuffle(min(count, 20_000), seed=seed, reshuffle_each_iteration=True)
        if flip:
            # Dataset.random's low bits run in streaks: its numbers seed a stateless flip instead.
            keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            stream = tf.data.Dataset.zip(stream, keys).map(
                lambda image, key: tf.image.stateless_random_flip_left_right(image, tf.stack([key, seed]))
            )
        stream = stream.batch(batch_size, drop_remainder=drop_remainder)
        if repeat:
            stream = stream.repeat()
        # Skipped batches are replayed from the cache (without one, re-read), before the float conversion.
        return stream.skip(skip_batches)

    # Built inside flat_map, the stream starts afresh in every iterator: else the shuffle state would carry over
    # from the iterator Keras opens (and drops) under tf.distribute, and the order differ from a single device's.
    stream = tf.data.Dataset.range(1).flat_map(batches)
    stream = stream.map(lambda images: tf.cast(images, tf.float32) / 255.0, num_parallel_calls=tf.data.AUTOTUNE)
    if replicas > 1:  # an empty share crashes BatchNormalization on some CPUs; the loss scaling assumes equal ones
        stream = stream.map(lambda images: images[: tf.shape(images)[0] // replicas * replicas])
        stream = stream.filter(lambda images: tf.shape(images)[0] > 0)
    return stream.prefetch(tf.data.AUTOTUNE)


def steps_per_pass(
    train_files: list[Path], validation_files: list[Path], batch_size: int, replicas: int, drop_remainder: bool
) -> tuple[int, int]:
    """The batches of a pass over the training and the validation files: a short last batch is dropped with
    `drop_remainder` (training only), else cut to a multiple of the replicas, saying how many that leaves out."""
    steps, left = [], []
    for split, files, drop in (("training", train_files, drop_remainder), ("validation", validation_files, False)):
        count = len(files)
        if count < batch_size and replicas > 1:
            count = sum(map(is_readable_image, files))  # one short batch: count what it will hold
        full, rest = divmod(count, batch_size)
        kept = 0 if drop else rest // replicas * replicas
        if full == 0 and kept == 0:
            raise DataError(
                f"the {count} readable {split} image(s) cannot be shared by the {replicas} replicas; "
                f"use at least {replicas} images"
            )
        steps.append(full + (kept > 0))
        left.append(rest - kept)
    if replicas > 1 and sum(left):
        print(
            f"{replicas} replicas: each batch is cut to a multiple of {replicas} images, so that every replica gets "
            f"an equal share; left out per epoch: {left[0]} of the {len(train_files)} training images and "
            f"{left[1]} of the {len(validation_files)} validation images"
        )
    return steps[0], steps[1]


def file_cache_prefix(cache_dir: str, files: Sequence[Path], image_size: int, channels: int, crop: int) -> Path:
    """A file cache's prefix, from all that makes its pixels: the files as listed (size, mtime), settings, decoder."""
    digest = hashlib.md5()
    for path in files:
        try:
            status = os.stat(path)
            stamp = f"{status.st_size}:{status.st_mtime_ns}"
        except OSError:
            stamp = "unreadable"
        digest.update(f"{path}\t{stamp}\n".encode("utf-8", "surrogateescape"))
    name = f"celeba_{image_size}px_{channels}ch_crop{crop}_decode{DECODE_VERSION}_{digest.hexdigest()[:12]}"
    return Path(cache_dir) / name


def file_cache_is_complete(prefix: Path) -> bool:
    """Whether TensorFlow finished the cache: it removes the lock files only after merging the index (a full disk
    can stop it in between, leaving an empty index)."""
    return Path(f"{prefix}.index").is_file() and not any(prefix.parent.glob(f"{prefix.name}_*.lockfile"))


def remove_partial_file_cache(prefix: Path) -> None:
    """Remove an unfinished cache's files, emptied first: their space returns even if a writer holds them."""
    if not file_cache_is_complete(prefix):
        for path in list(prefix.parent.glob(prefix.name + "*")):
            os.truncate(path, 0)
            path.unlink()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Report what data.py finds in a CelebA or face folder.")
    parser.add_argument("--data", required=True, help="CelebA root (Kaggle or original layout) or a folder of faces")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(find_dataset(args.data).describe())


if __name__ == "__main__":
    run_main(main)
