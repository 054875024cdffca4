"""Latent-space math and the fitted latent density, with numpy only (no TensorFlow).

    python latent.py --run runs/<name>                         # (re)fit <run>/latent_density.json
    python latent.py --run pretrained/celeba64 --data ./celeba # an exported folder (ONNX only)

The fitted latent density (ex-post density estimation, Ghosh et al., ICLR 2020) is a Gaussian mixture of k
full-covariance components fitted by EM to the training images' posterior means, k chosen by the validation
images' held-out log-likelihood: with beta below 1 the posteriors do not fill the N(0, I) prior, whose samples
land in holes between faces. train.py fits it at the end of a run; this script refits it. The file format and
sampling at temperature T: docs/generate.md, "The latent density file".
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import data
import runs
from errors import UserError, first_line, run_main
from recipe import training_splits
from runs import DENSITY_FILE  # also read as latent.DENSITY_FILE

DENSITY_FORMAT = "celeba-vae-latent-density/1"
MIXTURE_SIZES = (1, 2, 4, 8, 16, 32)  # k tried by select_density
MIN_POINTS_PER_DIM = 4  # a full-covariance component needs several points per latent dimension
MAX_FIT_IMAGES = 30_000  # EM time grows with N; a random subset beyond this is plenty
COVARIANCE_FLOOR = 1e-3  # a fraction of the data's mean variance added to each covariance's diagonal, against collapse
EM_ITERATIONS = 100
EM_TOLERANCE = 1e-3  # stop when the mean log-likelihood per point improves by less (nats)
# EM's work for choosing k, counted as points x k x D^2 x EM_ITERATIONS summed over the k tried: a
# bound that gives the same choice on any machine and under any load (k = 1, 2, 4, 8 at 30,000 x 128).
SELECTION_WORK = 7e11
SIGNIFICANT_DIGITS = 7  # float32 precision in the JSON file
SAMPLERS = ("density", "prior")


# --------------------------------------------------------------------------- latent math
def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points (1 - t) a + t b for each t: [T, D]."""
    t = np.asarray(t, dtype=np.float64)[:, None]
    return (1.0 - t) * a + t * b


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation [T, D] (White 2016): keeps the norm of equal-norm ends where lerp cuts through the
    prior's low-norm middle; lerp for (anti)parallel or zero vectors, which span no plane of rotation."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    omega = np.arccos(np.clip(np.dot(a, b) / norms, -1.0, 1.0)) if norms else 0.0
    if np.sin(omega) < 1e-6:
        return lerp(a, b, t)
    t = np.asarray(t, dtype=np.float64)[:, None]
    return (np.sin((1.0 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def latent_path(points: np.ndarray, steps: int, method: str) -> np.ndarray:
    """A path through points [n, D], `steps` points per segment sharing endpoints: [(n - 1) * (steps - 1) + 1, D]."""
    if method not in ("lerp", "slerp"):
        raise ValueError(f"unknown interpolation {method!r}; choose lerp or slerp")
    interpolate = lerp if method == "lerp" else slerp
    t = np.linspace(0.0, 1.0, steps)
    segments = [interpolate(points[i], points[i + 1], t)[(1 if i else 0) :] for i in range(len(points) - 1)]
    return np.concatenate(segments)


def normalized_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """Mixing weights for `count` faces, rescaled to sum to 1 (None: 1/count each)."""
    if weights is None:
        return np.full(count, 1.0 / count)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (count,):
        raise ValueError(f"got {weights.size} weights for {count} images; give one weight per image")
    total = weights.sum()
    if abs(total) < 1e-12:
        raise ValueError("the weights sum to 0; give weights with a non-zero sum, e.g. 1 1 2")
    return weights / total


def weighted_posterior(mu: np.ndarray, log_sigma: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu' = w @ mu, log sigma' = w @ log sigma: a geometric mean, so sigma' > 0 (within the inputs' if w >= 0)."""
    return weights @ mu, weights @ log_sigma


def reparameterize(mu: np.ndarray, log_sigma: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """z = mu + sigma * eps, broadcast over the leading axis of noise."""
    return mu + np.exp(log_sigma) * noise


def attribute_direction(
    mu: np.ndarray, labels: np.ndarray, held: np.ndarray | None = None, min_count: int = 1
) -> np.ndarray:
    """How mu [N, D] changes from label < 0 to label > 0 (0: unlabelled) with the `held` labels [N, H] fixed:
    the least-squares coefficient of the label beside them; without `held`, mean(mu | label > 0) -
    mean(mu | label < 0). ValueError when a side has fewer than min_count images."""
    labels = np.asarray(labels)
    positive, negative = labels > 0, labels < 0
    found = f"{int(positive.sum())} positive and {int(negative.sum())} negative"
    if positive.sum() < max(1, min_count) or negative.sum() < max(1, min_count):
        raise ValueError(f"{found} labelled images found, need at least {max(1, min_count)} of each")
    held = np.zeros((len(labels), 0)) if held is None else np.asarray(held).reshape(len(labels), -1)
    rows = positive | negative
    design = np.column_stack([positive, np.ones(len(labels)), held > 0])[rows].astype(np.float64)
    return np.linalg.lstsq(design, np.asarray(mu, np.float64)[rows], rcond=None)[0][0]


def attribute_sweep(z: np.ndarray, direction: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """z + alpha * direction for each alpha: [A, D]; negative alphas remove the attribute."""
    return z + np.asarray(alphas, dtype=np.float64)[:, None] * direction


def traversal_grid(z: np.ndarray, directions: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """z + values[c] * directions[r]: [len(directions), len(values), D]."""
    offsets = np.asarray(values, np.float64)[None, :, None] * np.asarray(directions, np.float64)[:, None, :]
    return np.asarray(z, dtype=np.float64) + offsets


def principal_directions(covariance: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` largest-variance unit directions [count, D] (largest component positive) and their deviations."""
    variances, vectors = np.linalg.eigh(np.asarray(covariance, dtype=np.float64))
    order = np.argsort(-variances, kind="stable")[:count]
    units = vectors[:, order].T
    units *= np.sign(units[np.arange(len(order)), np.abs(units).argmax(axis=1)])[:, None]
    return units, np.sqrt(np.maximum(variances[order], 0.0))


# --------------------------------------------------------------------------- the latent density
class DensityError(UserError):
    """A latent density file that cannot be used, reported as one line that says what to do."""


@dataclass
class LatentDensity:
    """A Gaussian mixture: weights [k], means [k, D], Cholesky factors [k, D, D]; `info`: what it was fitted on."""

    weights: np.ndarray
    means: np.ndarray
    cholesky: np.ndarray
    info: dict = field(default_factory=dict)

    @classmethod
    def standard_normal(cls, latent_dim: int) -> LatentDensity:
        """The VAE's own prior N(0, I) as a one-component mixture."""
        return cls(np.ones(1), np.zeros((1, latent_dim)), np.eye(latent_dim)[None])

    @property
    def latent_dim(self) -> int:
        return self.means.shape[1]

    @property
    def components(self) -> int:
        return len(self.weights)

    def draw(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Component indices [count] and noise [count, D]: `count` samples, for `latents` at any temperature."""
        one = self.components == 1  # no index drawn then: the prior's latents are T * rng.standard_normal
        components = np.zeros(count, np.int64) if one else rng.choice(self.components, size=count, p=self.weights)
        return components, rng.standard_normal((count, self.latent_dim))

    def latents(self, components: np.ndarray, noise: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """z = means[c] + T * L_c @ eps for each drawn (c, eps): [count, D]."""
        spread = np.einsum("nij,nj->ni", self.cholesky[components], noise)
        return self.means[components] + temperature * spread

    def sample(self, count: int, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        return self.latents(*self.draw(count, rng), temperature)

    def mean(self) -> np.ndarray:
        return self.weights @ self.means

    def covariance(self) -> np.ndarray:
        """The mixture's covariance [D, D]: within-component spread plus that of the means."""
        within = np.einsum("k,kij,klj->il", self.weights, self.cholesky, self.cholesky)
        centred = self.means - self.mean()
        return within + (centred * self.weights[:, None]).T @ centred

    def log_likelihood(self, points: np.ndarray) -> np.ndarray:
        """log p(z) in nats for each row of points [N, D]."""
        return np.logaddexp.reduce(component_log_joint(np.asarray(points, np.float64), self), axis=1)


def component_log_joint(points: np.ndarray, density: LatentDensity) -> np.ndarray:
    """log w_c + log N(x; mean_c, L_c L_c^T) for each row x of points [N, D] and component c: [N, k]."""
    columns = []
    for mean, cholesky in zip(density.means, density.cholesky, strict=True):
        whitened = (points - mean) @ np.linalg.inv(cholesky).T  # solves L y = x - mean, row by row
        columns.append(-0.5 * np.sum(whitened**2, axis=1) - np.sum(np.log(np.diag(cholesky))))
    return np.log(density.weights) - 0.5 * points.shape[1] * math.log(2.0 * math.pi) + np.stack(columns, axis=1)


def soft_assignments(points: np.ndarray, density: LatentDensity) -> tuple[np.ndarray, float]:
    """E-step: soft assignments [N, k] of the points to the components, and their mean log-likelihood."""
    joint = component_log_joint(points, density)
    total = np.logaddexp.reduce(joint, axis=1)
    return np.exp(joint - total[:, None]), float(np.mean(total))


def weighted_gaussians(
    points: np.ndarray, responsibilities: np.ndarray, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """M-step: weights [k], means [k, D] and Cholesky factors [k, D, D] from soft assignments [N, k]."""
    counts = responsibilities.sum(axis=0) + 1e-10
    means = (responsibilities.T @ points) / counts[:, None]
    factors = []
    for component in range(responsibilities.shape[1]):
        centred = points - means[component]
        covariance = (centred * responsibilities[:, component : component + 1]).T @ centred / counts[component]
        factors.append(np.linalg.cholesky(covariance + floor * np.eye(points.shape[1])))
    return counts / counts.sum(), means, np.stack(factors)


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 10) -> np.ndarray:
    """Hard assignments [N] of points to k clusters: k-means++ seeding, then Lloyd's iterations."""
    centres = [points[rng.integers(len(points))]]
    squared = np.sum((points - centres[0]) ** 2, axis=1)
    for _ in range(1, k):
        centres.append(points[rng.choice(len(points), p=squared / squared.sum())])
        squared = np.minimum(squared, np.sum((points - centres[-1]) ** 2, axis=1))
    centres = np.stack(centres)
    for _ in range(iterations):
        distances = np.sum(points**2, axis=1)[:, None] - 2.0 * points @ centres.T + np.sum(centres**2, axis=1)
        labels = np.argmin(distances, axis=1)
        for cluster in range(k):
            members = points[labels == cluster]
            # An emptied cluster restarts at the point farthest from its centre.
            centres[cluster] = members.mean(axis=0) if len(members) else points[np.argmax(distances.min(axis=1))]
    return labels


def fit_mixture(points: np.ndarray, components: int, seed: int = 0, iterations: int = EM_ITERATIONS) -> LatentDensity:
    """A full-covariance Gaussian mixture fitted to points [N, D] by EM from k-means++ (k = 1: the closed form)."""
    points = np.asarray(points, dtype=np.float64)
    if not np.all(np.isfinite(points)):
        raise ValueError("the points to fit contain NaN or inf")
    floor = COVARIANCE_FLOOR * max(float(np.mean(np.var(points, axis=0))), 1e-12)
    rng = np.random.default_rng(seed)
    labels = kmeans_plus_plus(points, components, rng) if components > 1 else np.zeros(len(points), int)
    density = LatentDensity(*weighted_gaussians(points, np.eye(components)[labels], floor))
    previous = -np.inf
    for _ in range(iterations if components > 1 else 0):
        assignments, likelihood = soft_assignments(points, density)
        if likelihood - previous < EM_TOLERANCE:
            break
        previous = likelihood
        density = LatentDensity(*weighted_gaussians(points, assignments, floor))
    return density


def select_density(
    fit_points: np.ndarray,
    heldout_points: np.ndarray,
    sizes: Sequence[int] = MIXTURE_SIZES,
    seed: int = 0,
    refit_points: np.ndarray | None = None,
    progress: Callable[[str], None] = lambda line: None,
    work: float = SELECTION_WORK,
) -> LatentDensity:
    """The mixture size k of `sizes` whose fit to fit_points best predicts heldout_points (mean log-likelihood),
    refitted to refit_points if given; the sizes past `work` (see SELECTION_WORK) are not tried."""
    fit_points, heldout_points = np.asarray(fit_points, np.float64), np.asarray(heldout_points, np.float64)
    if len(fit_points) < 2 or not len(heldout_points):
        raise DensityError(
            f"only {len(fit_points)} training and {len(heldout_points)} validation images could be encoded; "
            "a latent density needs 2 and 1 at least"
        )
    usable = usable_sizes(len(fit_points), fit_points.shape[1], sizes)
    tried = sizes_within_work(usable, *fit_points.shape, work)
    scores, fitted = {}, {}
    for k in tried:
        fitted[k] = fit_mixture(fit_points, k, seed=seed)
        scores[k] = float(np.mean(fitted[k].log_likelihood(heldout_points)))
        progress(f"  k = {k:2d}: held-out log-likelihood {scores[k]:.2f} nats per point")
    if len(tried) < len(usable):
        progress(f"  k = {usable[len(tried)]:2d} and more: not tried, beyond the work for choosing k")
    best = max(scores, key=scores.get)
    density = fitted[best] if refit_points is None else fit_mixture(refit_points, best, seed=seed)
    density.info["selection"] = {
        "chosen_components": best,
        "heldout_log_likelihood": {str(k): round(v, 4) for k, v in scores.items()},
        "fit_count": len(fit_points),
        "heldout_count": len(heldout_points),
        "note": "mean log-likelihood (nats per point) of the held-out posterior means under each k",
    }
    return density


def fit_seconds(images: int, latent_dim: int, encode_rate: float) -> float:
    """Seconds a fit to `images` takes at most, about: encoding at `encode_rate` a second (0: not counted),
    then EM's iterations for each k tried, timed on a probe (EM often stops at EM_TOLERANCE sooner)."""
    if images < 2:
        return 0.0
    points = np.random.default_rng(0).standard_normal((min(images, 2000), latent_dim))
    density = fit_mixture(points, 2, iterations=0)  # k-means++ only: the start is not what the iterations cost
    started = time.perf_counter()
    weighted_gaussians(points, soft_assignments(points, density)[0], COVARIANCE_FLOOR)
    count = min(images, MAX_FIT_IMAGES)
    tried = sizes_within_work(usable_sizes(count, latent_dim, MIXTURE_SIZES), count, latent_dim)
    iteration_per_k = (time.perf_counter() - started) / 2 * count / len(points)  # the probe has k = 2
    return (images / encode_rate if encode_rate > 0 else 0.0) + iteration_per_k * sum(tried) * EM_ITERATIONS


def sizes_within_work(sizes: Sequence[int], count: int, latent_dim: int, work: float = SELECTION_WORK) -> list[int]:
    """The first of `sizes` (ascending) whose EM fits to `count` points together stay within `work`; k = 1 always."""
    costs = [count * k * latent_dim**2 * EM_ITERATIONS if k > 1 else 0.0 for k in sizes]  # k = 1: the closed form
    return [k for k, spent in zip(sizes, itertools.accumulate(costs), strict=True) if spent <= work]


def usable_sizes(count: int, latent_dim: int, sizes: Sequence[int]) -> list[int]:
    """The `sizes` that `count` points can fit (k = 1 always); DensityError, saying how many are needed, if none."""
    usable = [k for k in sorted(set(sizes)) if k == 1 or count >= k * MIN_POINTS_PER_DIM * latent_dim]
    if not usable:
        k = min(sizes)
        raise DensityError(
            f"{count} images are too few for a mixture of {k} components in {latent_dim} dimensions: it needs at "
            f"least {k * MIN_POINTS_PER_DIM * latent_dim} ({k} x {MIN_POINTS_PER_DIM} x {latent_dim}); use more "
            "images or add 1 to --components"
        )
    return usable


def fit_memory_bytes(count: int, latent_dim: int, sizes: Sequence[int]) -> int:
    """Bytes a fit to `count` points takes, with a margin: per-point arrays and the largest mixture's matrices."""
    return 8 * (5 * count * latent_dim + 3 * max(usable_sizes(count, latent_dim, sizes)) * latent_dim**2)


# --------------------------------------------------------------------------- the density file
def rounded(values: np.ndarray) -> list:
    """Nested lists of floats with SIGNIFICANT_DIGITS digits, for a compact JSON file."""
    significant = np.vectorize(lambda v: float(f"{v:.{SIGNIFICANT_DIGITS}g}"), otypes=[np.float64])
    return significant(np.asarray(values, dtype=np.float64)).tolist()


def write_density(density: LatentDensity, folder: str | os.PathLike) -> Path:
    """latent_density.json into folder, atomically."""
    content = {
        "format": DENSITY_FORMAT,
        "latent_dim": density.latent_dim,
        "components": density.components,
        "sampling": "c ~ weights, eps ~ N(0, I), z = means[c] + T * cholesky[c] @ eps (T: temperature)",
        **density.info,
        # In full: 7 digits leave their sum up to ~1e-7 off 1, which numpy's choice(p=...) refuses.
        "weights": (density.weights / density.weights.sum()).tolist(),
        "means": rounded(density.means),
        "cholesky": rounded(np.tril(density.cholesky)),
    }
    path = Path(folder) / DENSITY_FILE
    try:
        runs.write_text_atomic(path, json.dumps(content, separators=(",", ":")) + "\n")
    except OSError as error:
        raise DensityError(f"cannot write {path} ({error.strerror}); free some space there and fit again") from None
    return path


def density_problem(content, latent_dim: int | None) -> str | None:
    if not isinstance(content, dict) or content.get("format") != DENSITY_FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        return f"is not a {DENSITY_FORMAT} file (format {found!r})"
    try:
        weights, means, cholesky = (np.asarray(content[key], np.float64) for key in ("weights", "means", "cholesky"))
    except (KeyError, TypeError, ValueError):
        return "lacks weights, means or cholesky arrays of numbers"
    k = len(weights) if weights.ndim == 1 else -1
    dims = content.get("latent_dim")
    if k < 1 or means.ndim != 2 or means.shape[0] != k or cholesky.shape != (k, means.shape[1], means.shape[1]):
        return (
            f"has arrays of mismatched shapes (weights {weights.shape}, means {means.shape}, cholesky {cholesky.shape})"
        )
    if dims != means.shape[1]:
        return f"says latent_dim {dims!r} but its means have {means.shape[1]} dimensions"
    if latent_dim is not None and dims != latent_dim:
        return f"is for latent size {dims}, this model has {latent_dim}"
    if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(means)) and np.all(np.isfinite(cholesky))):
        return "contains NaN or infinite numbers"
    if np.any(weights <= 0) or abs(weights.sum() - 1.0) > 1e-4:
        return f"has mixture weights that are not positive or do not sum to 1 (sum {weights.sum():.6g})"
    if np.any(np.triu(cholesky, 1) != 0) or np.any(np.diagonal(cholesky, axis1=1, axis2=2) <= 0):
        return "has a Cholesky factor that is not lower triangular with a positive diagonal (not positive definite)"
    return None


def read_density(path: str | os.PathLike, latent_dim: int | None = None) -> LatentDensity:
    """A checked latent_density.json; DensityError (one line) for a damaged or mismatched file."""
    path = Path(path)
    hint = f"refit it with: python latent.py --run {path.parent}"
    try:
        content = json.loads(path.read_text())
    except OSError as error:
        raise DensityError(f"cannot read {path} ({error.strerror}); {hint}") from None
    except ValueError as error:
        raise DensityError(f"{path} is not valid JSON ({first_line(error, 80)}); {hint}") from None
    problem = density_problem(content, latent_dim)
    if problem:
        raise DensityError(f"{path} {problem}; {hint}")
    weights, means, cholesky = (np.asarray(content[key], np.float64) for key in ("weights", "means", "cholesky"))
    info = {key: content[key] for key in ("fitted_on", "selection") if key in content}
    return LatentDensity(weights / weights.sum(), means, cholesky, info)


def find_density(folder: str | os.PathLike, latent_dim: int | None = None) -> LatentDensity | None:
    """The folder's checked latent_density.json, or None when it has none."""
    path = Path(folder) / DENSITY_FILE
    return read_density(path, latent_dim) if path.is_file() else None


def choose_sampler(name: str, folder: str | os.PathLike, latent_dim: int) -> tuple[LatentDensity, str]:
    """(density, label) for --sampler: the folder's fitted density, or N(0, I) for "prior" or (noted) if none."""
    density = find_density(folder, latent_dim) if name == "density" else None
    if density is None:
        if name == "density":
            print(
                f"note: {Path(folder) / DENSITY_FILE} not found, sampling the N(0, I) prior; fit it with "
                f"python latent.py --run {folder}",
                file=sys.stderr,
            )
        return LatentDensity.standard_normal(latent_dim), "prior"
    return density, "density"


# --------------------------------------------------------------------------- fitting a model folder
def fit_folder_density(
    backend,
    dataset,
    splits: Sequence[str],
    limit: int = 0,
    sizes: Sequence[int] = MIXTURE_SIZES,
    max_images: int = MAX_FIT_IMAGES,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> LatentDensity:
    """Fit a model folder's density to the posterior means of the first `limit` (0: all) train images, k chosen on
    the validation images, refitted to both if `splits` include validation; at most max_images a split, seeded."""
    rng = np.random.default_rng(seed)

    def subset(files: list) -> list:
        if len(files) <= max_images:
            return files
        return [files[i] for i in sorted(rng.choice(len(files), max_images, replace=False))]

    fitted, heldout = subset(dataset.split("train")[: limit or None]), subset(dataset.split("validation"))
    if len(fitted) < 2 or len(heldout) < 1:
        raise DensityError(
            f"fitting a latent density needs training and validation images; found {len(fitted)} and "
            f"{len(heldout)} under {dataset.root}"
        )
    # Before any image is encoded: too few images for every size, or too little memory.
    count, dims = len(fitted) + len(heldout), backend.latent_dim
    needed, available = fit_memory_bytes(count, dims, usable_sizes(len(fitted), dims, sizes)), data.available_memory()
    if available is not None and needed > available:
        raise DensityError(
            f"fitting a latent density to {count} images in {dims} dimensions takes about "
            f"{data.size_text(needed)} of memory, but only {data.size_text(available)} is available; use fewer "
            "images (--max-images) or smaller mixtures (--components)"
        )
    log(f"latent density: encoding {len(fitted)} training and {len(heldout)} validation images")
    progress = runs.Progress(count, "latent density: encoded")
    fitted, heldout = (runs.encode_files(files, backend, progress=progress.add)[0] for files in (fitted, heldout))
    progress.close()
    log(f"latent density: choosing k among {list(sizes)} on the {len(heldout)} validation posterior means")
    refit = np.concatenate([fitted, heldout]) if "validation" in splits else None
    density = select_density(fitted, heldout, sizes, seed=seed, refit_points=refit, progress=log)
    return describe_fit(density, splits, len(fitted if refit is None else refit), backend.run_dir.name)


def describe_fit(density: LatentDensity, splits: Sequence[str], count: int, source: str) -> LatentDensity:
    """Record in `density` what it was fitted on."""
    density.info["fitted_on"] = {
        "split": "+".join(splits),
        "count": count,
        "statistic": "posterior means mu of the images, cropped and resized as in training",
        "source": source,
    }
    return density


def finite_numbers(values: object, length: int) -> bool:
    """Whether a parsed JSON value is a list of `length` finite numbers."""
    return (
        isinstance(values, list)
        and len(values) == length
        and all(type(v) in (int, float) and math.isfinite(v) for v in values)
    )


def attribute_directions_problem(content: object, latent_dim: int) -> str | None:
    """What is wrong with a parsed attribute_directions.json, or None; a NaN would turn faces black."""
    if not isinstance(content, dict) or content.get("format") != runs.ATTRIBUTES_FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        return f"is not a {runs.ATTRIBUTES_FORMAT} file (format {found!r})"
    if content.get("latent_dim") != latent_dim:
        return f"holds directions for latent size {content.get('latent_dim')}, this model has {latent_dim}"
    attributes = content.get("attributes")
    if not isinstance(attributes, dict):
        return f"has attributes of type {type(attributes).__name__}, not a mapping of names to directions"
    for name, entry in attributes.items():
        if not (isinstance(entry, dict) and finite_numbers(entry.get("direction"), latent_dim)):
            return f"has a direction of {name} that is not a list of {latent_dim} finite numbers"
        if not all(type(entry.get(key)) is int and entry[key] >= 0 for key in ("positives", "negatives")):
            return f"has counts of {name}'s images that are not whole numbers"
        if not (isinstance(entry.get("held"), list) and all(isinstance(label, str) for label in entry["held"])):
            return f"has no list of the labels held fixed for {name} (held)"
    if "encoder_probe" in content and not finite_numbers(content["encoder_probe"], latent_dim):
        return f"has an encoder_probe that is not a list of {latent_dim} finite numbers"
    return None


def main(argv: Sequence[str] | None = None) -> Path:
    """Refit a model folder's latent density; returns the path written."""
    parser = argparse.ArgumentParser(
        description="Fit the latent density that generate.py samples random faces from: a Gaussian mixture over "
        "the posterior means of the training images, its size chosen on the validation images. train.py does "
        "this at the end of a run; this refits it for a run or an exported folder (ONNX only).",
        formatter_class=runs.HelpFormatter,
    )
    parser.add_argument("--run", required=True, help="model folder: a train.py run or an exported folder")
    parser.add_argument("--data", help="CelebA root or folder of faces (default: the data in the folder's config)")
    parser.add_argument(
        "--split",
        choices=("train", "train+validation"),
        help="images to fit to (default: the run's --train-split, else train)",
    )
    parser.add_argument(
        "--components", type=int, nargs="+", default=list(MIXTURE_SIZES), metavar="K", help="mixture sizes to try"
    )
    parser.add_argument(
        "--max-images", type=int, default=MAX_FIT_IMAGES, help="images per set at most (a seeded random subset)"
    )
    parser.add_argument("--backend", choices=("keras", "onnx"), help="default: keras when the folder has decoder.keras")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets and of the mixture's start")
    args = parser.parse_args(argv)
    if min(args.components) < 1 or args.max_images < 2:
        parser.error("--components must be at least 1 and --max-images at least 2")
    if args.seed < 0:
        parser.error(f"--seed must not be negative (got {args.seed})")

    # Before any work: the density is written into the folder, after encoding every image.
    runs.check_writable(Path(args.run) / DENSITY_FILE, folder=False, flag="--run")
    backend = runs.open_backend(args.run, args.backend)
    config = runs.read_config(args.run) if (Path(args.run) / runs.CONFIG_FILE).is_file() else {}
    data_path = args.data or config.get("data")
    if not data_path:
        raise DensityError(f"{args.run} does not say which data it was trained on; pass --data CELEBA_ROOT")
    splits = args.split.split("+") if args.split else training_splits(config)
    limit, dataset = 0 if args.split else config.get("limit", 0), data.find_dataset(data_path)
    density = fit_folder_density(backend, dataset, splits, limit, args.components, args.max_images, args.seed)
    path = write_density(density, args.run)
    print(f"wrote {path}: {density.components} Gaussian component(s) over {density.latent_dim} dimensions")
    return path


if __name__ == "__main__":
    run_main(main)
