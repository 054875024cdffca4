"""Explore a trained VAE's latent space; each mode writes one image grid (PNG, JPEG or WebP).

    python generate.py --mode sample --samples 64                 # the pretrained model
    python generate.py --run runs/r --mode reconstruct --data ./celeba --sampled 2
    python generate.py --run runs/r --mode sample --temperature 0.5 0.8 1.0 --sampler prior
    python generate.py --run runs/r --mode weighted --data ./celeba --identity 2937
    python generate.py --run runs/r --mode interpolate --images a.jpg b.jpg c.jpg --chain
    python generate.py --run runs/r --mode attribute --data ./celeba --attribute Smiling Eyeglasses
    python generate.py --run runs/r --mode attribute --random 4 --attribute Smiling  # no real faces
    python generate.py --run runs/r --mode traverse --origin --dims 0 1 2 3 --backend onnx

Modes: reconstruct (inputs over their reconstructions), sample (random faces per --temperature), weighted (a weighted
mix of encoded faces' posteriors), interpolate (lerp and slerp paths), attribute (z + alpha * a CelebA attribute's
direction, cached in <run>/attribute_directions.json) and traverse (along the latents' principal directions or
--dims). Faces come from --images, --ids, --identity or at random from --data; interpolate, attribute and traverse
start from random latents with --random N or when no faces are given: from --sampler at the first --temperature, the
run's fitted density (else the prior). The same --seed gives the same grid. The onnx backend imports no TensorFlow.
The grid goes to <run>/generated/<mode>.png unless --out names another file, never one the command reads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import align
import data
import latent
import runs
from errors import UserError, batches, first_line, run_main
from images import face_from_pixels, image_format, make_grid, read_pixels, save_images, to_image

HELD_ATTRIBUTE = "Male"  # held fixed in the other directions: in CelebA most attributes go with one gender
PROBE_TOLERANCE = 1e-3  # a probe change still read as the same encoder: above ONNX-vs-Keras noise, below an epoch
DEFAULT_FACES = {"reconstruct": 8, "weighted": 4, "attribute": 4}
DEFAULT_STEPS = {"interpolate": 8, "traverse": 7}
PRETRAINED_RUN = Path(__file__).resolve().parent / "pretrained" / "celeba64"
DEFAULT_RANDOM = {"interpolate": 8, "attribute": 4, "traverse": 1}  # the modes --random serves, without faces
TRAVERSED_DIMS = 8  # default number of dimensions to traverse
ACTIVITY_IMAGES = 256  # images encoded to measure the latents' spread for traverse
MAX_GRID_FACES = 1024  # a grid is for looking at: bigger ones are refused before any decoding
MAX_GRID_PIXELS = 64_000_000
MAX_SCALE = 16
MORE_FACES_HINT = "for more faces, run again with other --seed values (--save-individual: single PNGs)"


class GenerateError(UserError):
    """A problem with generate.py's flags or inputs."""


@dataclass
class Job:
    """One command, resolved (see resolve): the flags as given and what they name, checked."""

    args: argparse.Namespace  # the flags as parsed, nothing added
    run_dir: Path  # the model folder: --run, else the pretrained model
    out: Path  # the grid to write
    inputs: list[Path]  # what the command reads and must never overwrite: face files, model and data folders
    random: int | None  # random starting faces: --random, else the mode's default when no faces are given
    backend: runs.Backend
    density: latent.LatentDensity  # what draws random latents: the fitted density or the prior N(0, I)
    sampler: str  # "density" or "prior": the sampler used (density falls back to the prior)
    dataset: data.Dataset | None  # --data
    rng: np.random.Generator  # seeded by --seed


# --------------------------------------------------------------------------- choosing and loading faces
def require_dataset(dataset: data.Dataset | None, what: str) -> data.Dataset:
    if dataset is None:
        raise GenerateError(f"{what} needs --data CELEBA_ROOT (or give face files with --images FILE ...)")
    return dataset


def find_ids(dataset: data.Dataset, ids: Sequence[str]) -> list[Path]:
    """Paths of CelebA image ids: "000123.jpg", "000123" or "123"."""
    by_name = {p.name: p for p in dataset.files}
    paths = []
    for image_id in ids:
        candidates = [image_id, f"{image_id}.jpg"] + ([f"{int(image_id):06d}.jpg"] if image_id.isdigit() else [])
        found = next((by_name[c] for c in candidates if c in by_name), None)
        if found is None:
            raise GenerateError(f"image id {image_id!r} not found under {dataset.root}; give names like 000123.jpg")
        paths.append(found)
    return paths


def random_files(
    dataset: data.Dataset, split: str, count: int, rng: np.random.Generator, allow_fewer: bool = False
) -> list[Path]:
    """`count` distinct readable files of a split in a seeded random order (fewer only if allow_fewer)."""
    files = dataset.split(split)
    readable = (files[i] for i in rng.permutation(len(files)) if data.is_readable_image(files[i]))  # not truncated
    chosen = list(itertools.islice(readable, count))
    if len(chosen) == count or (allow_fewer and chosen):
        return chosen
    raise GenerateError(
        f"the {split} split under {dataset.root} has {len(chosen)} readable images, {count} needed; "
        "use another --split or a smaller count"
    )


def choose_faces(job: Job, count: int) -> list[Path]:
    """Face files from --images, --ids, --identity, or `count` at random from --split."""
    args, dataset = job.args, job.dataset
    if args.images:
        return [Path(p) for p in args.images]
    if args.ids:
        return find_ids(require_dataset(dataset, "--ids"), args.ids)
    if args.identity is not None:
        dataset = require_dataset(dataset, "--identity")
        if not dataset.identities:
            raise GenerateError(f"no identity_CelebA.txt under {dataset.root}; --identity needs it")
        paths = [p for p in dataset.files if dataset.identities.get(p.name) == args.identity]
        paths = [p for p in paths if data.is_readable_image(p)]
        if not paths:
            raise GenerateError(f"no readable images of identity {args.identity} under {dataset.root}")
        return paths[: args.count]  # None: all
    dataset = require_dataset(dataset, f"--mode {args.mode} with random faces")
    return random_files(dataset, args.split, count, job.rng)


def load_chosen_faces(job: Job, count: int) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """(faces [N, S, S, C], names, the photos they were found in or None) of choose_faces' files, aligned."""
    files = choose_faces(job, count)
    if len(files) > MAX_GRID_FACES:
        raise GenerateError(f"{len(files)} faces given, more than a grid shows ({MAX_GRID_FACES}); {MORE_FACES_HINT}")
    finder = align.FaceFinder() if job.args.images and not job.args.no_align else None
    backend, faces, names, photos = job.backend, [], [], []
    for path in files:
        try:
            pixels = read_pixels(path)
            found = [(None, pixels)] if finder is None else align.align_photo(pixels, finder, job.args.faces, str(path))
        except (FileNotFoundError, ValueError) as error:
            raise GenerateError(f"{error}; check the image paths given") from None
        except align.AlignError as error:
            raise GenerateError(f"{error}; give a photo of a face, or --no-align for an aligned crop") from None
        for number, (face, frame) in enumerate(found):
            faces.append(face_from_pixels(frame, backend.image_size, backend.channels, backend.crop))
            names.append(path.stem if len(found) == 1 else f"{path.stem}_{number}")
            if face is not None:
                photos.append(photo_tile(pixels, face.box, backend.image_size, backend.channels))
    return np.stack(faces), names, (np.stack(photos) if photos else None)  # each mode checks its grid's size


def photo_tile(pixels: np.ndarray, box: np.ndarray, size: int, channels: int) -> np.ndarray:
    """float32 [size, size, channels]: the whole photo, fitted in on white, the face's box in red."""
    photo = Image.fromarray(pixels)
    scale = size / max(photo.size)
    shrunk = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    photo = photo.resize(shrunk, Image.Resampling.BOX)
    tile = Image.new("RGB", (size, size), "white")
    offset = np.array([(size - photo.width) // 2, (size - photo.height) // 2] * 2)
    tile.paste(photo, tuple(offset[:2]))
    ImageDraw.Draw(tile).rectangle(list(box * scale + offset), outline=(255, 0, 0))
    array = np.asarray(tile.convert("L" if channels == 1 else "RGB"), np.float32) / 255.0
    return array.reshape(size, size, channels)


def check_random(args: argparse.Namespace) -> None:
    """Refuse --random (it replaces the real faces) in modes that need them and beside flags choosing them."""
    if args.random is None:
        return
    if args.mode == "sample":
        raise GenerateError("--mode sample always decodes random faces; set how many with --samples, not --random")
    if args.mode not in DEFAULT_RANDOM:
        raise GenerateError(f"--mode {args.mode} needs real faces; --random works with {', '.join(DEFAULT_RANDOM)}")
    flags = {
        "--images": args.images,
        "--ids": args.ids,
        "--identity": args.identity is not None,
        "--origin": args.origin,
    }
    conflicts = [flag for flag, given in flags.items() if given]
    if conflicts:
        raise GenerateError(f"--random starts from random faces, not chosen ones; drop {' and '.join(conflicts)}")


def starting_faces(job: Job, count: int) -> tuple[np.ndarray, np.ndarray | None, list[str], np.ndarray | None]:
    """(codes [N, D], faces or None, names, photos or None): --random latents, else the faces' posterior means."""
    if job.random:
        codes = job.density.sample(job.random, job.rng, job.args.temperature[0])
        return codes, None, [f"z{i + 1}" for i in range(job.random)], None
    faces, names, photos = load_chosen_faces(job, count)
    return job.backend.encode(faces)[0], faces, names, photos


# --------------------------------------------------------------------------- attribute directions
def encoder_probe(backend: runs.Backend) -> np.ndarray:
    """Posterior mean [D] of a ramp image: the encoder's fingerprint, so directions are not reused for other weights."""
    ramp = np.linspace(0.0, 1.0, backend.image_size, dtype=np.float32)
    image = (ramp[:, None] + ramp[None, :]) / 2
    return backend.encode(np.repeat(image[None, :, :, None], backend.channels, axis=-1))[0][0]


def read_directions(path: Path, probe: np.ndarray, recompute: bool = False) -> dict:
    """Cached directions by name; a damaged file, or one of another encoder, is refused (dropped with recompute)."""
    if not path.is_file():
        return {}
    try:
        cached = json.loads(path.read_text())
        problem = latent.attribute_directions_problem(cached, len(probe))
    except OSError as error:
        problem = f"cannot be read ({error.strerror})"
    except ValueError as error:  # not JSON, or not UTF-8
        problem = f"is not valid JSON ({first_line(error, 80)})"
    if problem is None and np.abs(np.subtract(cached.get("encoder_probe", probe), probe)).max() > PROBE_TOLERANCE:
        problem = "was computed with other encoder weights (the run was trained further or replaced)"
    if problem is None:
        return cached["attributes"]
    if recompute:
        return {}
    raise GenerateError(f"{path} {problem}; pass --recompute (with --data) to replace it")


def labelled_faces(dataset: data.Dataset, split: str, limit: int) -> tuple[list[Path], np.ndarray]:
    """Readable files of a split that have attribute labels, and their labels [N, 40]."""
    if not dataset.attributes:
        raise GenerateError(
            f"no attribute labels under {dataset.root} (list_attr_celeba.csv or Anno/list_attr_celeba.txt); "
            "attribute directions need CelebA's labels"
        )
    labelled = [p for part in split.split("+") for p in dataset.split(part) if p.name in dataset.attributes]
    labelled = data.usable_files(labelled[:limit] if limit else labelled)
    if not labelled:
        raise GenerateError(f"no labelled images in the {split} split under {dataset.root}; try --attribute-split all")
    return labelled, np.stack([dataset.attributes[p.name] for p in labelled])


def attribute_directions(job: Job) -> dict:
    """Directions of the requested attributes: cached ones reused, missing ones computed and cached."""
    args, backend, dataset = job.args, job.backend, job.dataset
    names = [data.CELEBA_ATTRIBUTES[data.attribute_index(name)] for name in args.attribute]  # canonical spellings
    path = job.run_dir / runs.ATTRIBUTES_FILE
    probe = encoder_probe(backend)
    cached = read_directions(path, probe, args.recompute)
    missing = [n for n in names if args.recompute or n not in cached]
    if missing:
        if dataset is None:
            raise GenerateError(
                f"computing the direction of {', '.join(missing)} needs --data CELEBA_ROOT (with CelebA's attribute "
                f"labels; the result is cached in {path} for later runs)"
            )
        files, labels = labelled_faces(dataset, args.attribute_split, args.max_labelled)
        columns = {name: labels[:, data.CELEBA_ATTRIBUTES.index(name)] for name in missing}
        for name, column in columns.items():  # before the slow encoding
            positives, negatives = int((column > 0).sum()), int((column < 0).sum())
            if min(positives, negatives) < max(1, args.min_labelled):
                raise GenerateError(
                    f"attribute {name}: found {positives} positive and {negatives} negative images among "
                    f"{len(files)} labelled ones under {dataset.root} ({args.attribute_split} split), need at "
                    f"least {max(1, args.min_labelled)} of each; use more labelled data or a lower --min-labelled"
                )
        print(f"encoding {len(files)} labelled images ({args.attribute_split} split) for {', '.join(missing)}")
        progress = runs.Progress(len(files), "encoded")
        mu, kept = runs.encode_files(files, backend, progress.add)
        progress.close()
        kept = set(kept)
        decoded = np.array([path in kept for path in files])  # undecodable files have no mu
        held_labels = labels[decoded, data.CELEBA_ATTRIBUTES.index(HELD_ATTRIBUTE)]
        for name, column in columns.items():
            column, held = column[decoded], [HELD_ATTRIBUTE] * (name != HELD_ATTRIBUTE)
            cached[name] = {
                "direction": [float(v) for v in latent.attribute_direction(mu, column, held_labels if held else None)],
                "positives": int((column > 0).sum()),
                "negatives": int((column < 0).sum()),
                "held": held,
            }
        content = {
            "format": runs.ATTRIBUTES_FORMAT,
            "latent_dim": backend.latent_dim,
            "encoder_probe": [float(v) for v in probe],
            "attributes": cached,
        }
        runs.write_text_atomic(path, json.dumps(content, indent=1) + "\n")
        print(f"wrote the directions of {', '.join(missing)} to {path}")
    for name in names:
        entry, source = cached[name], "computed" if name in missing else f"read from {path}"
        held = f" with {' and '.join(entry['held'])} held fixed" if entry["held"] else ""
        print(
            f"{name}: direction {source} from {entry['positives']} positive and {entry['negatives']} "
            f"negative images{held}, norm {np.linalg.norm(entry['direction']):.3f}"
        )
    return {name: np.asarray(cached[name]["direction"], dtype=np.float64) for name in names}


# --------------------------------------------------------------------------- modes: each builds one grid
def check_grid_size(job: Job, faces: int) -> None:
    """Refuse, before decoding, a grid of more than MAX_GRID_FACES faces or MAX_GRID_PIXELS pixels."""
    size = job.backend.image_size * job.args.scale
    pixels = faces * size**2
    if faces > MAX_GRID_FACES or pixels > MAX_GRID_PIXELS:
        raise GenerateError(
            f"this grid would hold {faces} faces of {size} px ({pixels / 1e6:.0f} "
            f"megapixels), above the limit of {MAX_GRID_FACES} faces and {MAX_GRID_PIXELS / 1e6:.0f} megapixels; "
            f"ask for fewer faces, steps or alphas or a smaller --scale; {MORE_FACES_HINT}"
        )


@dataclass
class Grid:
    """rows[r] is an array of images [n, H, W, C]; labels are drawn left of rows / above columns."""

    rows: list[np.ndarray] = field(default_factory=list)
    row_labels: list[str] = field(default_factory=list)
    column_labels: list[str] = field(default_factory=list)
    title: str = ""

    def add(self, images: np.ndarray, label: str, columns: int = 0) -> None:
        """Add images as one row, or as rows of `columns` each."""
        for row in batches(np.asarray(images), columns or len(images)):
            self.rows.append(row)
            self.row_labels.append(label)


def sampler_caption(job: Job, faces: str = "random faces") -> str:
    """What drew a grid's random faces, for its title."""
    if job.sampler == "prior":
        return f"{faces} from the N(0, I) prior"
    fitted = job.density.info.get("fitted_on")
    count = f" of {fitted['count']} training images" if isinstance(fitted, dict) and "count" in fitted else ""
    return f"{faces} from the latent density fitted to the posterior means{count} ({job.density.components} components)"


def random_caption(job: Job) -> str:
    """The title of a grid whose starting faces are random (--random), or none."""
    return f"{sampler_caption(job, 'starting faces')}, T={job.args.temperature[0]:g}" if job.random else ""


def reconstruct_grid(job: Job) -> Grid:
    args, backend, rng = job.args, job.backend, job.rng
    faces, names, photos = load_chosen_faces(job, args.count or DEFAULT_FACES["reconstruct"])
    check_grid_size(job, len(faces) * (2 + args.sampled + (photos is not None)))
    mu, log_var = backend.encode(faces)
    grid = Grid(column_labels=names)
    if photos is not None:
        grid.add(photos, "photo")
    grid.add(faces, "input")
    grid.add(backend.decode(mu), "mean")
    for draw in range(args.sampled):
        z = latent.reparameterize(mu, 0.5 * log_var, rng.standard_normal(mu.shape))
        grid.add(backend.decode(z), f"z draw {draw + 1}")
    return grid


def sample_grid(job: Job) -> Grid:
    args, backend, rng = job.args, job.backend, job.rng
    check_grid_size(job, args.samples * len(args.temperature))
    # One draw for all temperatures, so rows of different T show the same faces.
    components, noise = job.density.draw(args.samples, rng)
    grid = Grid(title=sampler_caption(job))
    for temperature in args.temperature:
        faces = backend.decode(job.density.latents(components, noise, temperature))
        grid.add(faces, f"{job.sampler} T={temperature:g}", args.columns)
    return grid


def weighted_grid(job: Job) -> Grid:
    args, backend, rng = job.args, job.backend, job.rng
    faces, names, _ = load_chosen_faces(job, args.count or DEFAULT_FACES["weighted"])
    check_grid_size(job, len(faces) + 1 + args.samples)
    try:
        weights = latent.normalized_weights(args.weights, len(faces))
    except ValueError as error:
        raise GenerateError(f"--weights: {error}") from None
    mu, log_var = backend.encode(faces)
    mixed_mu, mixed_log_sigma = latent.weighted_posterior(mu, 0.5 * log_var, weights)
    shares = ", ".join(f"{name} {w:.3g}" for name, w in zip(names, weights, strict=True))
    print(f"weights: 1/{len(faces)} for each of {len(faces)} faces" if args.weights is None else f"weights: {shares}")
    if backend.model_kind != "vae":
        print("note: this run is a plain autoencoder; its log_var head is untrained, so the spread is arbitrary")
    z = latent.reparameterize(mixed_mu, mixed_log_sigma, rng.standard_normal((args.samples, mu.shape[1])))
    grid = Grid()
    grid.add(faces, "inputs", args.columns)
    grid.add(backend.decode(mixed_mu[None]), "mean mu'")
    grid.add(backend.decode(z), "samples", args.columns)
    return grid


def interpolate_grid(job: Job) -> Grid:
    args, backend = job.args, job.backend
    # Paths run through posterior means (the most likely code of each face) or random latents.
    codes, faces, names, _ = starting_faces(job, 2 * args.pairs)
    if len(codes) < 2 or (not args.chain and len(codes) % 2):
        raise GenerateError(f"got {len(codes)} faces; give an even number (pairs A B C D ...) or --chain A B C ...")
    groups = [list(range(len(codes)))] if args.chain else [[i, i + 1] for i in range(0, len(codes), 2)]
    methods = ["lerp", "slerp"] if args.method == "both" else [args.method]
    steps = args.steps or DEFAULT_STEPS["interpolate"]
    points = (len(groups[0]) - 1) * (steps - 1) + 1  # along each path
    check_grid_size(job, len(groups) * len(methods) * (points + (0 if faces is None else 2)))
    grid = Grid(title=random_caption(job))
    for group in groups:
        name = "-".join(names[i] for i in group) if len(group) == 2 else f"chain of {len(group)}"
        for method in methods:
            row = backend.decode(latent.latent_path(codes[group], steps, method))
            if faces is not None:
                row = np.concatenate([faces[group[:1]], row, faces[group[-1:]]])
            grid.add(row, f"{name} {method}")
    steps_labels = [f"step {i}" for i in range(points)]
    if args.chain:  # the faces the chain passes through, by name
        for position, index in enumerate(groups[0]):
            steps_labels[position * (steps - 1)] = names[index]
    grid.column_labels = steps_labels if faces is None else ["input", *steps_labels, "input"]
    return grid


def attribute_grid(job: Job) -> Grid:
    args, backend = job.args, job.backend
    directions = attribute_directions(job)
    codes, faces, names, photos = starting_faces(job, args.count or DEFAULT_FACES["attribute"])
    shown = [images for images in (photos, faces) if images is not None]  # before the sweep
    check_grid_size(job, len(directions) * len(codes) * (len(args.alphas) + len(shown)))
    columns = ["photo", "input"][2 - len(shown) :] + [f"a={alpha:+g}" for alpha in args.alphas]
    grid = Grid(column_labels=columns, title=random_caption(job))
    for name, direction in directions.items():
        for i, code in enumerate(codes):
            sweep = backend.decode(latent.attribute_sweep(code, direction, args.alphas))
            grid.add(np.concatenate([images[i : i + 1] for images in shown] + [sweep]), f"{name} {names[i]}")
    return grid


def traverse_directions(job: Job) -> tuple[np.ndarray, list[str]]:
    """(directions [n, D], labels), each one standard deviation of the latents' spread long: by default its
    principal directions, where faces change most (single dimensions are entangled)."""
    args, latent_dim = job.args, job.backend.latent_dim
    dims = args.dims
    if job.dataset is not None:
        files = random_files(job.dataset, args.split, ACTIVITY_IMAGES, job.rng, allow_fewer=True)
        covariance = np.cov(runs.encode_files(files, job.backend)[0], rowvar=False)
        spread = f"the posterior means of {len(files)} {args.split} images"
    elif job.sampler == "density":
        covariance, spread = job.density.covariance(), "the fitted latent density"
    else:
        covariance, spread = np.eye(latent_dim), "the prior N(0, I)"
        if dims is None:  # all directions of the prior are alike: the first dimensions
            dims = list(range(min(TRAVERSED_DIMS, latent_dim)))
            print("give --data, or a fitted latent density (latent.py), to traverse where faces change most")
    if dims is not None:
        bad = [d for d in dims if not 0 <= d < latent_dim]
        if bad:
            raise GenerateError(f"--dims {bad} out of range; this model's latent dimensions are 0..{latent_dim - 1}")
        print(f"traversing dimensions {dims} in standard deviations under {spread}")
        return np.eye(latent_dim)[dims] * np.sqrt(np.diag(covariance))[dims, None], [f"z[{d}]" for d in dims]
    units, deviations = latent.principal_directions(covariance, TRAVERSED_DIMS)
    deviation_range = f"standard deviations {deviations[0]:.2f} to {deviations[-1]:.2f}"
    print(f"traversing the {len(units)} principal directions of {spread} ({deviation_range})")
    return units * deviations[:, None], [f"PC{i + 1}" for i in range(len(units))]


def traverse_grid(job: Job) -> Grid:
    args, backend = job.args, job.backend
    directions, labels = traverse_directions(job)
    values = np.linspace(-args.span, args.span, args.steps or DEFAULT_STEPS["traverse"])
    if args.origin:
        codes, faces, names = np.zeros((1, backend.latent_dim)), None, ["origin"]
    else:
        codes, faces, names, _ = starting_faces(job, 1)
    check_grid_size(job, len(codes) * len(directions) * (len(values) + (faces is not None)))
    columns = ([] if faces is None else ["input"]) + [f"{v:+.2g} sd" for v in values]
    grid = Grid(column_labels=columns, title=random_caption(job))
    for i, center in enumerate(codes):
        images = backend.decode(latent.traversal_grid(center, directions, values).reshape(-1, backend.latent_dim))
        images = images.reshape(len(directions), len(values), *images.shape[1:])
        for direction, row in zip(labels, images, strict=True):
            label = direction if len(codes) == 1 else f"{names[i]} {direction}"
            grid.add(row if faces is None else np.concatenate([faces[i : i + 1], row]), label)
    return grid


MODE_GRIDS = {
    "reconstruct": reconstruct_grid,
    "sample": sample_grid,
    "weighted": weighted_grid,
    "interpolate": interpolate_grid,
    "attribute": attribute_grid,
    "traverse": traverse_grid,
}


# --------------------------------------------------------------------------- output
def write_grid(grid: Grid, job: Job) -> None:
    """The grid, and with --save-individual each tile as <out-stem>/rRR_cCC.png: all or nothing."""
    out, args = job.out, job.args
    files = {out: make_grid(grid.rows, grid.row_labels, grid.column_labels, scale=args.scale, title=grid.title)}
    if args.save_individual:
        for r, row in enumerate(grid.rows):
            for c, image in enumerate(row):
                files[out.with_suffix("") / f"r{r:02d}_c{c:02d}.png"] = to_image(image)
    for path in files:
        runs.check_output_path(path, job.inputs, [job.run_dir / runs.GENERATED_DIR])
    try:
        save_images(files)
    except OSError as error:
        raise GenerateError(f"cannot write {out} ({error.strerror}); give another --out") from None
    if args.save_individual:
        print(f"wrote {len(files) - 1} single faces to {out.with_suffix('')}/")


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=runs.HelpFormatter)
    parser.add_argument("--run", help="a train.py run or export_onnx.py folder (default: pretrained/celeba64)")
    parser.add_argument("--mode", choices=MODE_GRIDS, required=True, help="what to generate")
    parser.add_argument("--backend", choices=("keras", "onnx"), help="(default: keras if decoder.keras exists)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--out", help=".png, .jpg, .jpeg or .webp (default: [<run>/]generated/<mode>.png)")
    parser.add_argument("--save-individual", action="store_true", help="also write each face as its own PNG")
    parser.add_argument("--scale", type=int, default=1, help="enlarge each face this many times in the grid")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random picks and noise")

    faces = parser.add_argument_group("input faces (reconstruct, weighted, interpolate, attribute, traverse)")
    faces.add_argument("--data", help="CelebA root or a face folder; needed for --ids, random picks and attributes")
    faces.add_argument("--images", nargs="+", metavar="FILE", help="photos of faces, aligned first (align.py)")
    faces.add_argument("--faces", type=align.parse_faces, default="largest", help="--images: largest, all or face N")
    faces.add_argument("--no-align", action="store_true", help="--images are aligned crops already (CelebA's)")
    faces.add_argument("--ids", nargs="+", metavar="ID", help="CelebA image ids under --data, e.g. 000123.jpg")
    faces.add_argument("--split", choices=(*data.SPLITS, "all"), default="validation", help="split of the random faces")
    faces.add_argument("--count", type=int, help="random faces (default: reconstruct 8, weighted 4, attribute 4)")
    faces.add_argument(
        "--random", type=int, metavar="N", help="interpolate, attribute, traverse: start from N random latents"
    )
    faces.add_argument("--sampler", choices=latent.SAMPLERS, default="density", help="the fitted density or N(0, I)")

    modes = parser.add_argument_group("mode options")
    modes.add_argument("--sampled", type=int, default=0, help="reconstruct: rows decoded from sampled z ~ q(z|x)")
    modes.add_argument("--samples", type=int, default=16, help="sample, weighted: faces to generate")
    modes.add_argument("--columns", type=int, default=8, help="sample, weighted: faces per grid row")
    modes.add_argument(
        "--temperature", type=float, nargs="+", default=[1.0], help="sample: a row block per spread T (1: as fitted)"
    )
    modes.add_argument("--identity", type=int, help="weighted: use the images of this CelebA identity number")
    modes.add_argument("--weights", type=float, nargs="+", help="weighted: one per face (default: equal)")
    modes.add_argument("--pairs", type=int, default=4, help="interpolate: random pairs to pick (--random N: N/2)")
    modes.add_argument("--chain", action="store_true", help="interpolate: one path through all given faces")
    modes.add_argument("--method", choices=("lerp", "slerp", "both"), default="both", help="interpolate: path kind")
    modes.add_argument("--steps", type=int, help="interpolate: path points (default 8); traverse: values (default 7)")
    modes.add_argument("--attribute", nargs="+", default=["Smiling"], help="attribute: CelebA attribute names")
    modes.add_argument(
        "--alphas", type=float, nargs="+", default=[-2.0, -1.0, 0.0, 1.0, 2.0], help="attribute: direction multiples"
    )
    modes.add_argument(
        "--attribute-split",
        choices=(*data.SPLITS, "train+validation", "all"),
        default="all",
        help="attribute: split(s) whose labelled images define the directions",
    )
    modes.add_argument("--min-labelled", type=int, default=10, help="attribute: positives and negatives needed, each")
    modes.add_argument("--max-labelled", type=int, default=20000, help="attribute: labelled images to encode (0: all)")
    modes.add_argument("--recompute", action="store_true", help="attribute: recompute cached directions")
    modes.add_argument(
        "--dims", type=int, nargs="+", help="traverse: these latent dimensions, not the spread's principal directions"
    )
    modes.add_argument("--span", type=float, default=3.0, help="traverse: -span..span standard deviations")
    modes.add_argument("--origin", action="store_true", help="traverse: around z = 0 instead of a face")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags as given (see resolve); values no model can use are refused by argparse (exit 2) before loading."""
    parser = build_parser()
    args = parser.parse_args(argv)
    minimums = {"count": 1, "random": 1, "samples": 1, "columns": 1, "pairs": 1, "scale": 1, "steps": 2}
    minimums |= dict.fromkeys(("sampled", "threads", "min_labelled", "max_labelled", "seed"), 0)
    # Faces per unit of a flag, bounded before anything is loaded; each mode checks its whole grid before decoding.
    faces_each = {"count": 1, "random": 1, "samples": 1, "sampled": 1, "steps": 1, "pairs": 2}
    for name, least in minimums.items():
        value, flag = getattr(args, name), f"--{name.replace('_', '-')}"
        if value is not None and value < least:
            must = f"be at least {least}" if least else "not be negative"
            parser.error(f"{flag} must {must} (got {value})")
        if value is not None and value * faces_each.get(name, 0) > MAX_GRID_FACES:
            parser.error(f"{flag} {value} asks for more faces than a grid shows ({MAX_GRID_FACES}); {MORE_FACES_HINT}")
    if args.scale > MAX_SCALE:
        parser.error(f"--scale must be at most {MAX_SCALE} (got {args.scale})")
    if args.threads > (os.cpu_count() or 1):
        parser.error(f"--threads must be at most {os.cpu_count() or 1}, the number of CPUs (got {args.threads})")
    if not (math.isfinite(args.span) and args.span > 0):
        parser.error(f"--span must be a positive number (got {args.span})")
    lists = {"temperature": "numbers of 0 or more, e.g. 0.7 1", "alphas": "finite numbers", "weights": "finite numbers"}
    for name, takes in lists.items():
        values = getattr(args, name) or []
        negative = name == "temperature" and any(v < 0 for v in values)  # a temperature is a spread
        if negative or not all(map(math.isfinite, values)):
            parser.error(f"--{name} takes {takes} (got {' '.join(map(str, values))})")
    return args


def resolve(args: argparse.Namespace) -> Job:
    """What the flags name, made concrete and checked before any face is decoded."""
    check_random(args)
    run_dir = Path(args.run) if args.run else PRETRAINED_RUN
    # The pretrained model ships in the repository: its outputs go to ./generated, not into it.
    out = runs.check_writable(args.out or Path(args.run or ".") / runs.GENERATED_DIR / f"{args.mode}.png", folder=False)
    image_format(out)
    inputs = [Path(p) for p in args.images or []] + [run_dir] + ([Path(args.data)] if args.data else [])
    runs.check_output_path(out, inputs, [run_dir / runs.GENERATED_DIR])
    if args.save_individual and out.with_suffix("").is_file():
        raise GenerateError(f"--save-individual writes into {out.with_suffix('')}, which is a file; give another --out")
    # With no faces given at all, the modes that can start from random faces do so.
    no_faces = not (args.data or args.images or args.ids or args.identity is not None or args.origin)
    random = DEFAULT_RANDOM.get(args.mode) if no_faces and args.random is None else args.random
    backend = runs.open_backend(run_dir, args.backend, args.threads)
    density, sampler = latent.choose_sampler(args.sampler, run_dir, backend.latent_dim)
    dataset = data.find_dataset(args.data) if args.data else None
    return Job(args, run_dir, out, inputs, random, backend, density, sampler, dataset, np.random.default_rng(args.seed))


def main(argv: Sequence[str] | None = None) -> Path:
    """Run one mode; returns the path of the grid written."""
    job = resolve(parse_args(argv))
    grid = MODE_GRIDS[job.args.mode](job)
    write_grid(grid, job)
    columns = max(len(row) for row in grid.rows)
    print(f"wrote {job.out} ({job.args.mode}: {len(grid.rows)} rows x {columns} columns, {job.backend.kind} backend)")
    return job.out


if __name__ == "__main__":
    run_main(main)
