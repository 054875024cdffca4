"""Evaluate any model folder on real images: reconstruction quality, loss terms, latent use,
what random faces look like under each sampler, and optionally FID.

    python evaluate.py --run runs/<name> --data ./celeba --split test
    python evaluate.py --run pretrained/celeba64 --data ./celeba --split test  # an exported folder
    python evaluate.py --run runs/<name> --split validation --limit 2000
    python evaluate.py --run runs/<name> --fid --inception-weights inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5

The folder is a train.py run (run with Keras) or an exported one (onnxruntime; TensorFlow then
only for --fid). Images load as in training and every figure is computed with numpy, so both
backends agree to the ONNX parity. Prints a table and writes the figures and settings atomically
to <folder>/eval_<split>.json (or --out); docs/generate.md explains the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import data
from errors import UserError, batches, first_line, run_main
from images import made_folders
from latent import LatentDensity, find_density
from runs import (
    BCE_EPSILON,
    CONFIG_FILE,
    DENSITY_FILE,
    MIN_GAUSSIAN_SIGMA,
    Backend,
    HelpFormatter,
    Progress,
    check_output_path,
    check_writable,
    import_keras,
    load_decodable,
    open_backend,
    read_config,
    write_text_atomic,
)

EVAL_FORMAT = "celeba-vae-eval/1"
ACTIVE_UNIT_THRESHOLD = 0.01  # Var_x(mu_j) above this: an active unit (Burda et al. 2016)
KL_DIM_THRESHOLD = 0.01  # nats; a latent dimension whose mean KL is above this carries information
MIN_MSE = 1e-10  # PSNR floor for exact reconstructions: at most 100 dB
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # tf.image.ssim's defaults
LUMINANCE = np.array([0.299, 0.587, 0.114])
INCEPTION_SHAPE = (299, 299, 3)
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
FID_BATCH_SIZE = 32

FeatureFn = Callable[[np.ndarray], np.ndarray]  # images [B, H, W, C] in [0, 1] -> features [B, F]


class EvalError(UserError):
    """Settings or data that cannot be evaluated."""


# --------------------------------------------------------------------------- metric math (numpy only)
def psnr(mse: float | np.ndarray, max_val: float = 1.0) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, 10 log10(max_val^2 / MSE); MSE floored at MIN_MSE."""
    return 10.0 * np.log10(max_val**2 / np.maximum(np.asarray(mse, dtype=np.float64), MIN_MSE))


def mu_variance(mu: np.ndarray) -> np.ndarray:
    """Variance over the images (rows) of each latent mean (column); zeros for a single image."""
    return np.asarray(mu, dtype=np.float64).var(axis=0)


def active_units(mu: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of latent dimensions whose posterior mean varies across images: Var_x(mu_j) > threshold."""
    return int(np.sum(mu_variance(mu) > threshold))


def kl_per_dimension(mu: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """KL(N(mu_j, exp(log_var_j)) || N(0, 1)) [N, d]; rows sum to vae.kl_divergence, training's KL."""
    mu, log_var = np.asarray(mu, np.float64), np.asarray(log_var, np.float64)
    return -0.5 * (1.0 + log_var - mu**2 - np.exp(log_var))


def sum_squared_error(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Per-image sum of squared errors over pixels and channels: the `mse` loss term."""
    difference = np.asarray(images, np.float64) - np.asarray(reconstructions, np.float64)
    return np.sum(difference**2, axis=(1, 2, 3))


def binary_cross_entropy(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Per-image binary cross-entropy summed over pixels: the `bce` loss term (clipped as in vae.py)."""
    x = np.asarray(images, np.float64)
    x_hat = np.clip(np.asarray(reconstructions, np.float64), BCE_EPSILON, 1.0 - BCE_EPSILON)
    return -np.sum(x * np.log(x_hat) + (1.0 - x) * np.log(1.0 - x_hat), axis=(1, 2, 3))


def filter_valid(images: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of [N, H, W, C] with the same 1-D taps along H and W."""
    size = len(taps)
    rows = sum(tap * images[:, i : images.shape[1] - size + 1 + i] for i, tap in enumerate(taps))
    return sum(tap * rows[:, :, i : rows.shape[2] - size + 1 + i] for i, tap in enumerate(taps))


def ssim(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Per-image SSIM as tf.image.ssim computes it ('valid' borders); the window shrinks below 11 pixels."""
    x, y = np.asarray(images, np.float64), np.asarray(reconstructions, np.float64)
    size = min(SSIM_WINDOW, x.shape[1], x.shape[2])
    taps = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2.0) / SSIM_SIGMA) ** 2)  # outer product: the 2-D window
    taps /= taps.sum()
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # for values in [0, 1]
    mean_x, mean_y = filter_valid(x, taps), filter_valid(y, taps)
    product, squares = 2.0 * mean_x * mean_y, mean_x**2 + mean_y**2
    luminance = (product + c1) / (squares + c1)
    structure = (2.0 * filter_valid(x * y, taps) - product + c2) / (filter_valid(x**2 + y**2, taps) - squares + c2)
    return np.mean(luminance * structure, axis=(1, 2, 3))


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """Per-image variance of the Laplacian of the luminance: sharpness, which blur lowers (Pech-Pacheco 2000)."""
    images = np.asarray(images, np.float64)
    grey = images[..., 0] if images.shape[-1] == 1 else images @ LUMINANCE
    response = grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] - 4 * grey[:, 1:-1, 1:-1]
    return response.reshape(len(images), -1).var(axis=1)


class SampleStatistics:
    """Sharpness and diversity (see the results' note) of a stream of images, in float64."""

    def __init__(self):
        self.count, self.sharpness_total, self.squared_norms, self.total = 0, 0.0, 0.0, 0.0  # total: the image sum

    def update(self, images: np.ndarray) -> None:
        flat = np.asarray(images, np.float64).reshape(len(images), -1)
        self.count += len(flat)
        self.sharpness_total += float(np.sum(laplacian_variance(images)))
        self.squared_norms += float(np.sum(flat**2))
        self.total = self.total + flat.sum(axis=0)

    def summary(self) -> dict:
        if self.count < 2:
            return {"count": self.count, "sharpness": None, "diversity": None}
        # The mean of |x_i - x_j|^2 over pairs i != j is twice the summed per-value variance (ddof 1).
        variance = (self.squared_norms - float(np.sum(self.total**2)) / self.count) / (self.count - 1)
        diversity = math.sqrt(2.0 * max(variance, 0.0) / len(self.total))
        return {"count": self.count, "sharpness": self.sharpness_total / self.count, "diversity": diversity}


def mse_nll_constant(dims: int) -> float:
    """The `mse` loss plus this is the Gaussian NLL with sigma^2 = 1/2: (x - x_hat)^2 + log(pi) / 2 per value."""
    return 0.5 * dims * math.log(math.pi)


def bits_per_dim(nats: float, dims: int) -> float:
    """Nats per image -> bits per dimension."""
    return nats / (dims * math.log(2.0))


def likelihood_terms(kind: str, sse: np.ndarray, bce: np.ndarray | None, dims: int) -> dict:
    """Per-image reconstruction term as in training, the NLL it stands for (None for bce), the decoder's
    sigma^2 (for `gaussian` the split's MSE, floored as in training) and the NLL minus the term."""
    sse = np.asarray(sse, dtype=np.float64)
    if kind == "mse":
        constant = mse_nll_constant(dims)
        return {"reconstruction": sse, "nll": sse + constant, "variance": 0.5, "nll_constant": constant}
    if kind == "gaussian":
        variance = max(float(np.mean(sse)) / dims, MIN_GAUSSIAN_SIGMA**2)
        nll = sse / (2.0 * variance) + 0.5 * dims * math.log(2.0 * math.pi * variance)
        return {"reconstruction": nll, "nll": nll, "variance": variance, "nll_constant": 0.0}
    if kind == "bce":
        return {"reconstruction": np.asarray(bce, np.float64), "nll": None, "variance": None, "nll_constant": None}
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of ('mse', 'bce', 'gaussian')")


def elbo_summary(nll: np.ndarray | None, kl: np.ndarray | None, dims: int) -> dict:
    """Negative ELBO per image (mean NLL + mean KL) in nats and bits/dim; None where either is n/a."""
    if nll is None or kl is None:
        return {"negative_elbo": None, "bits_per_dim": None, "bits_per_dim_8bit": None}
    nats = float(np.mean(nll) + np.mean(kl))
    bpd = bits_per_dim(nats, dims)
    return {"negative_elbo": nats, "bits_per_dim": bpd, "bits_per_dim_8bit": bpd + math.log2(255.0)}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^1/2 sigma2 sigma1^1/2)^1/2): the usual
    tr((sigma1 sigma2)^1/2), but of a symmetric matrix, whose roots eigh takes (clipped at 0)."""
    mu1, sigma1, mu2, sigma2 = (np.asarray(value, np.float64) for value in (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: means {mu1.shape} {mu2.shape}, covariances {sigma1.shape} {sigma2.shape}")
    eigenvalues, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2.0)
    root1 = (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    cross = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None))))
    return max(float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross), 0.0)


class FeatureMoments:
    """Running mean and covariance (ddof 1, like np.cov) of feature rows, in float64."""

    def __init__(self):
        self.count, self.total, self.outer = 0, 0.0, 0.0  # the sums of the rows and of their outer products

    def update(self, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        self.count += len(features)
        self.total = self.total + features.sum(axis=0)
        self.outer = self.outer + features.T @ features

    def mean(self) -> np.ndarray:
        return self.total / self.count

    def covariance(self) -> np.ndarray:
        mean = self.mean()
        return (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)


def fid(real: FeatureMoments, other: FeatureMoments) -> float:
    return frechet_distance(real.mean(), real.covariance(), other.mean(), other.covariance())


# --------------------------------------------------------------------------- FID feature extractor
def fid_features(
    fid: bool, features: FeatureFn | None, weights: str | None
) -> tuple[FeatureFn | None, str | None, str | None]:
    """(FID feature function, its weights' source, why FID is skipped): `features`, else InceptionV3 if it loads."""
    if not fid:
        return None, None, None
    if features is not None:
        return features, "custom feature function", None
    if weights is not None and not Path(weights).is_file():
        reason = f"--inception-weights {weights} is not a file"
    else:
        keras = import_keras()
        try:
            model = keras.applications.InceptionV3(
                include_top=False, pooling="avg", weights=weights or "imagenet", input_shape=INCEPTION_SHAPE
            )
            return inception_features(model), weights or "imagenet (Keras download)", None
        except Exception as error:  # downloads and weight files fail in many ways
            what = f"load InceptionV3 weights from {weights}" if weights else "download InceptionV3's ImageNet weights"
            reason = f"cannot {what} ({first_line(error)}); --inception-weights takes a local {INCEPTION_WEIGHTS_FILE}"
    print(f"FID skipped: {reason}")
    return None, None, reason


def inception_features(model) -> FeatureFn:
    """Feature function of a Keras InceptionV3 pool model for images [B, H, W, C] in [0, 1]."""
    import keras

    preprocess = keras.applications.inception_v3.preprocess_input

    def features(images: np.ndarray) -> np.ndarray:
        parts = []
        for batch in batches(images, FID_BATCH_SIZE):
            batch = keras.ops.convert_to_tensor(np.asarray(batch, np.float32))
            if batch.shape[-1] == 1:
                batch = keras.ops.repeat(batch, 3, axis=-1)
            batch = keras.ops.image.resize(batch * 255.0, INCEPTION_SHAPE[:2], interpolation="bilinear")
            parts.append(np.asarray(model(preprocess(batch), training=False), np.float64))
        return np.concatenate(parts)

    return features


# --------------------------------------------------------------------------- model folder and data
def describe_folder(backend: Backend) -> dict:
    """The model kind, loss and data of a model folder: from its config.json, else the ONNX metadata."""
    config = read_config(backend.run_dir) if (backend.run_dir / CONFIG_FILE).is_file() else {}
    loss = config.get("reconstruction", getattr(backend, "metadata", {}).get("reconstruction", "mse"))
    return {"model": config.get("model", backend.model_kind), "reconstruction": loss, "data": config.get("data")}


def split_files(data_path: str | None, split: str, limit: int) -> tuple[list[Path], str]:
    """Readable image files of a split (the first `limit` when limit > 0) and the dataset's description."""
    if not data_path:
        raise EvalError("the model folder does not say which data it was trained on; pass --data CELEBA_ROOT")
    dataset = data.find_dataset(data_path)
    files = data.usable_files(dataset.split(split)[: limit or None])
    if not files:
        raise EvalError(f"split {split!r} has no readable images ({dataset.describe()})")
    return files, dataset.describe()


# --------------------------------------------------------------------------- evaluation
def collect(
    backend: Backend,
    files: Sequence[Path],
    kind: str,
    variational: bool,
    seed: int,
    batch_size: int,
    features: FeatureFn | None,
    moments: dict[str, FeatureMoments],
    verbose: int,
) -> tuple[dict[str, np.ndarray], SampleStatistics, list[Path]]:
    """One pass: per-image columns, the real images' sample statistics (and FID moments), the files that
    do not decode. The sampled z's eps is drawn in file order, so it does not depend on the batch size."""
    posterior_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0])
    columns: dict[str, list[np.ndarray]] = defaultdict(list)
    real, failed, progress = SampleStatistics(), [], Progress(len(files), "evaluated", bool(verbose))
    for batch in batches(files, batch_size):
        images, bad = load_decodable(batch, backend)
        failed += bad
        if not len(images):
            continue
        mu, log_var = (np.asarray(part, np.float32) for part in backend.encode(images))
        columns["mu"].append(mu)
        decoded = {"mean": backend.decode(mu)}
        if variational:
            columns["kl_dims"].append(kl_per_dimension(mu, log_var))
            eps = posterior_rng.standard_normal(mu.shape, dtype=np.float32)
            decoded["sample"] = backend.decode(mu + np.exp(0.5 * log_var) * eps)
        for prefix, reconstructions in decoded.items():
            columns[f"{prefix}_sse"].append(sum_squared_error(images, reconstructions))
            columns[f"{prefix}_ssim"].append(ssim(images, reconstructions))
            if kind == "bce":
                columns[f"{prefix}_bce"].append(binary_cross_entropy(images, reconstructions))
        real.update(images)
        if features is not None:
            moments["real"].update(features(images))
            moments["reconstructions"].update(features(decoded["mean"]))
        progress.add(len(images) + len(bad))
    progress.close()
    if not columns:
        raise EvalError("no images could be decoded in this split")
    return {name: np.concatenate(parts) for name, parts in columns.items()}, real, failed


def sample_figures(
    backend: Backend,
    samplers: dict[str, LatentDensity],
    count: int,
    seed: int,
    batch_size: int,
    features: FeatureFn | None,
    moments: dict[str, FeatureMoments],
) -> dict[str, dict]:
    """Sharpness and diversity (and FID moments) of `count` random faces from each sampler, at temperature 1."""
    figures = {}
    streams = np.random.SeedSequence(seed).spawn(3)  # 0: the sampled z of collect(), 1: prior, 2: density
    for name, sampler in samplers.items():
        rng = np.random.default_rng(streams[1 if name == "prior" else 2])
        statistics = SampleStatistics()
        for start in range(0, count, batch_size):
            faces = backend.decode(sampler.sample(min(batch_size, count - start), rng))
            statistics.update(faces)
            if features is not None:
                moments[f"{name}_samples"].update(features(faces))
        figures[name] = statistics.summary()
    return figures


def reconstruction_summary(columns: dict[str, np.ndarray], prefix: str, kind: str, dims: int) -> tuple[dict, dict]:
    """Quality figures of the reconstructions of one kind of z, and its likelihood_terms."""
    mse = columns[f"{prefix}_sse"] / dims
    terms = likelihood_terms(kind, columns[f"{prefix}_sse"], columns.get(f"{prefix}_bce"), dims)
    return {
        "mse": float(np.mean(mse)),
        "psnr_per_image": float(np.mean(psnr(mse))),
        "psnr_of_mean_mse": psnr(float(np.mean(mse))),
        "ssim": float(np.mean(columns[f"{prefix}_ssim"])),
        "reconstruction": float(np.mean(terms["reconstruction"])),
        "gaussian_variance": terms["variance"] if kind == "gaussian" else None,
    }, terms


def summarize(columns: dict[str, np.ndarray], *, kind: str, variational: bool, dims: int) -> dict:
    """Every figure of the evaluation from the per-image columns (pure numpy)."""
    mu = columns["mu"]
    units = {"count": active_units(mu), "threshold": ACTIVE_UNIT_THRESHOLD, "mu_variance": mu_variance(mu).tolist()}
    results: dict = {"active_units": units}
    results["posterior_mean"], _ = reconstruction_summary(columns, "mean", kind, dims)
    if not variational:
        results["posterior_mean"]["loss_beta1"] = None
        elbo = {**elbo_summary(None, None, dims), "nll": None, "nll_constant": None, "decoder_variance": None}
        note = "autoencoder: no posterior and no prior, so no KL and no ELBO"
        return {**results, "posterior_sample": None, "kl": None, "elbo": {**elbo, "note": note}}
    kl, kl_dims = columns["kl_dims"].sum(axis=1), columns["kl_dims"].mean(axis=0)
    results["posterior_sample"], terms = reconstruction_summary(columns, "sample", kind, dims)
    for z in ("posterior_mean", "posterior_sample"):
        results[z]["loss_beta1"] = results[z]["reconstruction"] + float(np.mean(kl))
    results["kl"] = {
        "mean": float(np.mean(kl)),
        "std": float(np.std(kl)),
        "per_dim_mean": kl_dims.tolist(),
        "per_dim_max": float(np.max(kl_dims)),
        "per_dim_median": float(np.median(kl_dims)),
        "dims_above_threshold": int(np.sum(kl_dims > KL_DIM_THRESHOLD)),
        "threshold_nats": KL_DIM_THRESHOLD,
    }
    notes = {
        "mse": "mse read as a Gaussian with sigma^2 = 1/2: the reconstruction term plus D/2 log(pi) "
        f"= {mse_nll_constant(dims):.1f} nats",
        "gaussian": "Gaussian NLL with sigma^2 fitted on this split (its mean squared error)",
        "bce": "bce of continuous targets is not a normalized likelihood: no ELBO",
    }
    results["elbo"] = {
        **elbo_summary(terms["nll"], kl, dims),
        "nll": None if terms["nll"] is None else float(np.mean(terms["nll"])),
        "nll_constant": terms["nll_constant"],
        "decoder_variance": terms["variance"],
        "note": notes[kind] + "; one sampled z per image",
    }
    return results


def evaluate(
    run: Path,
    data_path: str | None = None,
    split: str = "test",
    limit: int = 0,
    batch_size: int = 64,
    seed: int = 0,
    backend_kind: str | None = None,
    fid: bool = False,
    inception_weights: str | None = None,
    features: FeatureFn | None = None,
    verbose: int = 1,
    out: Path | None = None,
) -> dict:
    """The results main() prints and writes; the arguments are the flags, `features` stands in for
    InceptionV3. `out` is refused, before any image is decoded, when it is one of the split's images."""
    check_settings(limit, batch_size, seed)
    backend = open_backend(Path(run), backend_kind)
    folder = describe_folder(backend)
    variational = folder["model"] == "vae"
    # The random faces evaluated: the prior's (an autoencoder has none) and the fitted density's.
    prior = LatentDensity.standard_normal(backend.latent_dim) if variational else None
    density = find_density(backend.run_dir, backend.latent_dim)
    samplers = {name: sampler for name, sampler in (("prior", prior), ("density", density)) if sampler is not None}
    data_path = data_path or folder["data"]
    files, description = split_files(data_path, split, limit)
    if out is not None:
        check_output_path(out, inputs=files)
    if verbose:
        print(f"data: {description}; evaluating {len(files)} {split} images with the {backend.kind} backend")
    features, source, skipped = fid_features(fid, features, inception_weights)
    started, moments = time.perf_counter(), defaultdict(FeatureMoments)
    kind, dims = folder["reconstruction"], backend.image_size * backend.image_size * backend.channels
    columns, real, failed = collect(backend, files, kind, variational, seed, batch_size, features, moments, verbose)
    if failed:
        print(f"warning: skipped {len(failed)} image(s) that could not be decoded, e.g. {failed[0]}")
    count = len(columns["mu"])
    samples = {"real": real.summary(), **sample_figures(backend, samplers, count, seed, batch_size, features, moments)}
    results = {
        "format": EVAL_FORMAT,
        "run": str(backend.run_dir),
        "backend": backend.kind,
        "data": str(data_path),
        "split": split,
        "limit": limit,
        "seed": seed,
        "batch_size": batch_size,
        "count": count,
        "skipped_files": [str(path) for path in failed],
        "model": folder["model"],
        "reconstruction_kind": kind,
        **{key: getattr(backend, key) for key in ("image_size", "channels", "latent_dim")},
        "dims": dims,
        **summarize(columns, kind=kind, variational=variational, dims=dims),
        "samples": {
            **samples,
            "temperature": 1.0,
            "density_file": {"file": DENSITY_FILE, "components": density.components, **density.info}
            if density
            else None,
            "note": "sharpness: mean variance of the Laplacian of the luminance; diversity: RMS pairwise "
            "distance per pixel value; random faces as many as the split's images, temperature 1",
        },
        "fid": fid_summary(moments, list(samplers), source, skipped),
    }
    results["seconds"] = round(time.perf_counter() - started, 2)
    return results


def check_settings(limit: int, batch_size: int, seed: int) -> None:
    if limit < 0:
        raise EvalError(f"--limit must be 0 (all) or a positive count (got {limit})")
    if batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1 (got {batch_size})")
    if seed < 0:
        raise EvalError(f"--seed must not be negative (got {seed})")


def fid_summary(moments: dict, samplers: list[str], source: str | None, skipped: str | None) -> dict:
    if source is None:
        return {"status": "skipped" if skipped else "off", "reason": skipped or "not asked for (--fid)"}
    count = moments["real"].count
    if count < 2:
        return {"status": "skipped", "reason": f"FID needs at least 2 images, the split has {count}"}
    feature_dim = len(moments["real"].mean())
    note = "compare only within this project at equal N"
    if count < feature_dim:
        note = f"N = {count} < {feature_dim} features: biased upward, compare only at equal N"
    return {
        "status": "computed",
        "weights": source,
        "count": count,
        "feature_dim": feature_dim,
        **{f"{name}_samples": fid(moments["real"], moments[f"{name}_samples"]) for name in samplers},
        "reconstructions": fid(moments["real"], moments["reconstructions"]),
        "note": note,
    }


# --------------------------------------------------------------------------- output
def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1e5 or 0 < abs(value) < 10**-digits:
        return f"{value:.4g}"
    return f"{value:.{digits}f}"


def format_table(results: dict) -> str:
    """The results as a readable text table."""
    mean, sample = results["posterior_mean"], results["posterior_sample"] or {}
    kind, latent = results["reconstruction_kind"], results["latent_dim"]
    term = {"mse": "sum of squared errors", "bce": "binary cross-entropy", "gaussian": "Gaussian NLL, nats"}[kind]
    lines = [
        f"evaluation of {results['run']} ({results['backend']}) on {results['count']} {results['split']} images "
        f"({results['data']}; model {results['model']}, loss {kind}, latent {latent}, seed {results['seed']})",
        "",
        f"{'':44s} {'z = mu':>12s} {'z ~ q(z|x)':>12s}",
    ]
    for label, key, digits in (
        ("per-pixel MSE", "mse", 5),
        ("PSNR of the mean MSE (dB)", "psnr_of_mean_mse", 2),
        ("PSNR per image, averaged (dB)", "psnr_per_image", 2),
        ("SSIM", "ssim", 4),
        (f"reconstruction term ({term})", "reconstruction", 2),
        ("loss at beta = 1 (reconstruction + KL)", "loss_beta1", 2),
        ("decoder sigma^2 fitted on the split", "gaussian_variance", 6),
    ):
        if key != "gaussian_variance" or kind == "gaussian":
            lines.append(f"{label:44s} {fmt(mean.get(key), digits):>12s} {fmt(sample.get(key), digits):>12s}")
    kl, elbo, units = results["kl"], results["elbo"], results["active_units"]
    lines.append("")
    if kl:
        lines += [
            f"{'KL per image (nats)':44s} {kl['mean']:.2f} (std {kl['std']:.2f})",
            f"{'KL per dimension (nats)':44s} max {kl['per_dim_max']:.3f}, median {kl['per_dim_median']:.4f}, "
            f"{kl['dims_above_threshold']} of {latent} above {kl['threshold_nats']}",
        ]
    else:
        lines.append(f"{'KL per image (nats)':44s} n/a (autoencoder)")
    lines += [
        f"{'active units (Var of mu > ' + str(units['threshold']) + ')':44s} {units['count']} of {latent}",
        f"{'negative ELBO (nats per image)':44s} {fmt(elbo['negative_elbo'], 2)}",
        f"{'bits/dim (density on [0, 1])':44s} {fmt(elbo['bits_per_dim'], 4)}",
        f"{'bits/dim (on 0..255, approximate)':44s} {fmt(elbo['bits_per_dim_8bit'], 4)}",
        f"{'':44s} ({elbo['note']})",
        *sample_table(results["samples"]),
    ]
    fid_result = results["fid"]
    if fid_result["status"] == "computed":
        for name in ("prior", "density"):
            if f"{name}_samples" in fid_result:
                lines.append(f"{'FID, random faces from the ' + name:44s} {fmt(fid_result[name + '_samples'], 2)}")
        lines.append(f"{'FID, reconstructions (z = mu)':44s} {fmt(fid_result['reconstructions'], 2)}")
        lines.append(f"{'':44s} ({fid_result['count']} images, {fid_result['weights']}; {fid_result['note']})")
    else:
        lines.append(f"{'FID':44s} {fid_result['status']}: {fid_result['reason']}")
    return "\n".join(lines)


def sample_table(samples: dict) -> list[str]:
    """Sharpness and diversity of the real images and of each sampler's random faces."""
    names = [name for name in ("real", "prior", "density") if samples.get(name)]
    header = {"real": "real images", "prior": "prior N(0,I)", "density": "fitted density"}
    lines = ["", f"{'random faces, temperature 1':44s} " + " ".join(f"{header[n]:>15s}" for n in names)]
    for key, meaning in (("sharpness", "variance of the Laplacian"), ("diversity", "RMS pairwise distance")):
        lines.append(f"{f'{key} ({meaning})':44s} " + " ".join(f"{fmt(samples[n][key], 5):>15s}" for n in names))
    density = samples.get("density_file")
    if density:
        fitted = density.get("fitted_on")
        fitted_text = f", fitted to {fitted['count']} {fitted.get('split', '')} posterior means" if fitted else ""
        lines.append(f"{'':44s} (density: {density['components']} Gaussian components{fitted_text})")
    return [*lines, ""]


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> dict:
    """Evaluate, print the table and write the JSON; returns the results. A UserError is one line (run_main)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="model folder: a train.py run or an exported folder")
    parser.add_argument(
        "--data", dest="data_path", metavar="PATH", help="CelebA root or face folder (default: run's data)"
    )
    parser.add_argument("--split", choices=(*data.SPLITS, "all"), default="test", help="which images to evaluate")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="only the split's first N images (0: all)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the sampled z and the random faces")
    parser.add_argument(
        "--backend", dest="backend_kind", choices=("keras", "onnx"), help="(default: keras if decoder.keras exists)"
    )
    parser.add_argument("--fid", action="store_true", help="also compute FID (InceptionV3, ImageNet weights)")
    parser.add_argument(
        "--inception-weights", metavar="PATH", help=f"a local {INCEPTION_WEIGHTS_FILE} for --fid (default: downloaded)"
    )
    parser.add_argument("--out", type=Path, metavar="PATH", help="JSON file to write (default: RUN/eval_<split>.json)")
    parser.add_argument("--verbose", type=int, choices=(0, 1), default=1, help="0: only the table; 1: progress too")
    args = parser.parse_args(argv)  # the flags, named as evaluate()'s arguments
    out = args.out or args.run / f"eval_{args.split}.json"
    if args.out or args.run.is_dir():  # else the missing run folder is the error to report
        check_output_path(check_writable(out, folder=False))
    results = evaluate(**{**vars(args), "out": out})
    print(format_table(results))
    try:
        with made_folders(out.parent):
            safe = json.loads(json.dumps(results), parse_constant=lambda name: None)  # JSON has no NaN or inf: null
            write_text_atomic(out, json.dumps(safe, indent=2) + "\n")
    except OSError as error:  # a full disk, or a folder that takes no new files
        raise EvalError(
            f"cannot write {out} ({error.strerror or error}); the figures above were not saved: "
            "free some space or give another --out"
        ) from None
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    run_main(main)
