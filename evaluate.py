"""Evaluate a trained run on real images: reconstruction quality, loss terms, latent use, FID.

    python evaluate.py --run runs/<name> --data ./celeba --split test
    python evaluate.py --run runs/<name> --split validation --limit 2000
    python evaluate.py --run runs/<name> --fid --inception-weights inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5
    python evaluate.py --help

Loads the run's float32 encoder.keras / decoder.keras and config.json, reads the split the
way training does (same crop and resize), prints a table and writes every figure, with the
settings, to RUN/eval_<split>.json (atomically). Figures, per image unless said otherwise:

- Per-pixel MSE (mean over pixels, channels and images) of reconstructions decoded from the
  posterior mean (z = mu, what validation and the grids show) and from one sampled
  z ~ q(z|x) (seeded). PSNR two ways: `psnr_per_image` is 10 log10(1 / MSE_i) per image,
  then averaged; `psnr_of_mean_mse` is 10 log10(1 / mean MSE) (MSE 0.012 -> 19.2 dB).
  Per-image MSE is floored at 1e-10 (PSNR at most 100 dB). SSIM is tf.image.ssim
  (max_val 1, 11x11 Gaussian window) averaged over images.
- Loss terms as training defines them (vae.reconstruction_loss with the run's kind, and
  vae.kl_divergence), with z = mu (comparable to history.csv's val_* columns) and with
  sampled z. The loss at beta = 1 is reconstruction (sampled z) + KL.
- Negative ELBO = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)) in nats per image, estimated with
  one sampled z per image (an unbiased estimate of the bound; the z = mu value is not a
  bound), and bits/dim = nats / (D ln 2) with D = H * W * C. Only where the reconstruction
  term is a normalized likelihood of the [0, 1] pixel values:
    `gaussian`: already a Gaussian NLL. sigma^2 is the training formula applied to the
        whole split instead of a batch: the split's mean squared error, floored at
        vae.MIN_GAUSSIAN_SIGMA^2 (the maximum-likelihood value, fitted on the split itself,
        so slightly optimistic).
    `mse`: the sum of squared errors is a Gaussian NLL with fixed sigma^2 = 1/2 less the
        constant D/2 * log(pi); that constant is added so the figure is a real NLL.
    `bce`: a Bernoulli likelihood of continuous targets is not normalized: n/a.
  bits/dim is that of a continuous density over [0, 1]^D (negative when the density is
  peaked); `bits_per_dim_8bit` adds log2(255), the same density over 0..255 pixel values
  (no dequantization, so only an approximation of a discrete 8-bit likelihood, for which a
  uniform model scores 8).
- KL per image (mean and std) and per latent dimension (the mean vector in the JSON; max,
  median and the count above 0.01 nats in the table); active units (Burda et al. 2016): the
  number of dimensions j with Var over the split of mu_j above 0.01.
- Autoencoder runs (model "ae", z = mu): reconstruction figures only; KL, ELBO, bits/dim and
  sampled z are n/a (active units are still counted but depend on the code's scale).
- FID (--fid): Frechet distance between InceptionV3 pool features (Keras application,
  ImageNet weights, include_top=False, average pooling; images resized bilinearly to 299x299,
  grayscale repeated to 3 channels, keras.applications.inception_v3.preprocess_input) of the
  split's real images and (a) as many prior samples decoded from z ~ N(0, I) (seeded) and
  (b) the posterior-mean reconstructions. The weights come from --inception-weights (a local
  inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5) or Keras' download; when neither
  works FID is skipped with a one-line reason. These Keras weights are not the TF1 graph used
  by the reference FID code, and FID is biased upward for small N (under 2048 images the
  feature covariance is rank-deficient): compare FIDs only within this project at equal N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TensorFlow's C++ start-up chatter

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import data  # noqa: E402
import train  # noqa: E402
import vae  # noqa: E402
from runs import HelpFormatter, RunFolderError, load_model, read_config, write_text_atomic  # noqa: E402

EVAL_FORMAT = "celeba-vae-eval/1"
ACTIVE_UNIT_THRESHOLD = 0.01  # Var_x(mu_j) above this: an active unit (Burda et al. 2016)
KL_DIM_THRESHOLD = 0.01  # nats; a latent dimension whose mean KL is above this carries information
MIN_MSE = 1e-10  # PSNR floor for exact reconstructions: at most 100 dB
SSIM_WINDOW = 11
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
FID_BATCH_SIZE = 32

FeatureFn = Callable[[np.ndarray], np.ndarray]  # images [B, H, W, C] in [0, 1] -> features [B, F]


class EvalError(RuntimeError):
    """A problem the user can fix, reported as one line."""


# --------------------------------------------------------------------------- metric math (numpy only)
def psnr(mse: float | np.ndarray, max_val: float = 1.0) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, 10 log10(max_val^2 / MSE); MSE floored at MIN_MSE."""
    value = 10.0 * np.log10(max_val**2 / np.maximum(np.asarray(mse, dtype=np.float64), MIN_MSE))
    return float(value) if np.ndim(value) == 0 else value


def mu_variance(mu: np.ndarray) -> np.ndarray:
    """Variance over the images (rows) of each latent mean (column); zeros for a single image."""
    mu = np.asarray(mu, dtype=np.float64)
    return mu.var(axis=0) if len(mu) > 1 else np.zeros(mu.shape[1])


def active_units(mu: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of latent dimensions whose posterior mean varies across images: Var_x(mu_j) > threshold."""
    return int(np.sum(mu_variance(mu) > threshold))


def kl_per_dimension(mu: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """KL(N(mu_j, exp(log_var_j)) || N(0, 1)) for each image and dimension, [N, d]; rows sum to
    vae.kl_divergence."""
    mu = np.asarray(mu, dtype=np.float64)
    log_var = np.asarray(log_var, dtype=np.float64)
    return -0.5 * (1.0 + log_var - mu**2 - np.exp(log_var))


def mse_nll_constant(dims: int) -> float:
    """What turns the `mse` loss (a sum of squared errors) into a Gaussian NLL with sigma^2 = 1/2:
    -log N(x; x_hat, 1/2) = (x - x_hat)^2 + log(pi) / 2 per dimension."""
    return 0.5 * dims * math.log(math.pi)


def calibrated_variance(sse: np.ndarray, dims: int) -> float:
    """sigma^2 of the `gaussian` loss over a whole split: its mean squared error, floored as in training."""
    return max(float(np.mean(sse)) / dims, vae.MIN_GAUSSIAN_SIGMA**2)


def gaussian_nll(sse: np.ndarray, dims: int, variance: float) -> np.ndarray:
    """Per-image Gaussian NLL in nats from its sum of squared errors, with one shared variance."""
    return np.asarray(sse, dtype=np.float64) / (2.0 * variance) + 0.5 * dims * math.log(2.0 * math.pi * variance)


def bits_per_dim(nats: float, dims: int) -> float:
    """Nats per image -> bits per dimension."""
    return nats / (dims * math.log(2.0))


def likelihood_terms(kind: str, sse: np.ndarray, bce: np.ndarray | None, dims: int) -> dict:
    """Per-image reconstruction term as training defines it, and the NLL it stands for.

    Returns {"reconstruction": [N], "nll": [N] or None, "variance": sigma^2 or None,
    "nll_constant": what was added to the reconstruction term to get the NLL, or None}.
    """
    sse = np.asarray(sse, dtype=np.float64)
    if kind == "mse":
        constant = mse_nll_constant(dims)
        return {"reconstruction": sse, "nll": sse + constant, "variance": 0.5, "nll_constant": constant}
    if kind == "gaussian":
        variance = calibrated_variance(sse, dims)
        nll = gaussian_nll(sse, dims, variance)
        return {"reconstruction": nll, "nll": nll, "variance": variance, "nll_constant": 0.0}
    if kind == "bce":
        if bce is None:
            raise ValueError("the bce reconstruction term needs the per-image binary cross-entropy")
        return {
            "reconstruction": np.asarray(bce, dtype=np.float64),
            "nll": None,
            "variance": None,
            "nll_constant": None,
        }
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {vae.RECONSTRUCTION_LOSSES}")


def elbo_summary(nll: np.ndarray | None, kl: np.ndarray | None, dims: int) -> dict:
    """Negative ELBO per image (mean NLL + mean KL) in nats and bits/dim; None where either is n/a."""
    if nll is None or kl is None:
        return {"negative_elbo": None, "bits_per_dim": None, "bits_per_dim_8bit": None}
    nats = float(np.mean(nll) + np.mean(kl))
    bpd = bits_per_dim(nats, dims)
    return {"negative_elbo": nats, "bits_per_dim": bpd, "bits_per_dim_8bit": bpd + math.log2(255.0)}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):

        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^1/2 sigma2 sigma1^1/2)^1/2)

    The last trace equals tr((sigma1 sigma2)^1/2) of the usual formula, but its argument is
    symmetric positive semi-definite, so both square roots come from np.linalg.eigh
    (eigenvalues clipped at 0 against round-off). The result is clipped at 0 for the same reason.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: means {mu1.shape} {mu2.shape}, covariances {sigma1.shape} {sigma2.shape}")
    root1 = psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    cross = float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)
    return max(value, 0.0)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


class FeatureMoments:
    """Running mean and covariance (ddof 1, like np.cov) of feature rows, in float64."""

    def __init__(self):
        self.count = 0
        self.total: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def update(self, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if self.total is None:
            self.total = np.zeros(features.shape[1])
            self.outer = np.zeros((features.shape[1], features.shape[1]))
        self.count += len(features)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def mean(self) -> np.ndarray:
        return self.total / self.count

    def covariance(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError("a covariance needs at least 2 feature rows")
        mean = self.mean()
        return (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)


def fid(real: FeatureMoments, other: FeatureMoments) -> float:
    return frechet_distance(real.mean(), real.covariance(), other.mean(), other.covariance())


# --------------------------------------------------------------------------- FID feature extractor
def load_inception(weights: str | None) -> tuple[FeatureFn | None, str]:
    """(feature function, description of the weights), or (None, why FID is skipped)."""
    if weights is not None and not Path(weights).is_file():
        return None, f"--inception-weights {weights} is not a file"
    source = weights if weights is not None else "imagenet"
    try:
        model = keras.applications.InceptionV3(
            include_top=False, pooling="avg", weights=source, input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3)
        )
    except Exception as error:  # downloads and weight files fail in many ways
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        if weights is None:
            return None, (
                f"cannot download the InceptionV3 ImageNet weights ({reason}); "
                f"pass --inception-weights PATH to a local {INCEPTION_WEIGHTS_FILE}"
            )
        return None, f"cannot load InceptionV3 weights from {weights} ({reason}); it should be {INCEPTION_WEIGHTS_FILE}"
    return inception_features(model), (weights if weights is not None else "imagenet (Keras download)")


def inception_features(model: keras.Model, batch_size: int = FID_BATCH_SIZE) -> FeatureFn:
    """Feature function of an InceptionV3 pool model for images [B, H, W, C] in [0, 1]."""
    preprocess = keras.applications.inception_v3.preprocess_input

    def features(images: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(images), batch_size):
            batch = tf.convert_to_tensor(np.asarray(images[start : start + batch_size], np.float32))
            if batch.shape[-1] == 1:
                batch = tf.repeat(batch, 3, axis=-1)
            batch = tf.image.resize(batch * 255.0, (INCEPTION_SIZE, INCEPTION_SIZE), method="bilinear")
            parts.append(np.asarray(model(preprocess(batch), training=False), np.float64))
        return np.concatenate(parts)

    return features


# --------------------------------------------------------------------------- run and data
def load_run(run_dir: Path) -> tuple[dict, keras.Model, keras.Model]:
    """config.json, encoder and decoder of a train.py run, checked against each other."""
    if not run_dir.is_dir():
        raise EvalError(f"run folder {run_dir} does not exist; give a folder written by train.py (runs/<name>)")
    config = read_config(run_dir)
    encoder, decoder = (load_model(run_dir, part, config) for part in ("encoder", "decoder"))
    return config, encoder, decoder


def split_files(data_path: str, split: str, limit: int) -> tuple[list[Path], str]:
    """Readable image files of a split (the first `limit` when limit > 0) and the dataset's description."""
    dataset = data.find_dataset(data_path)
    files = dataset.split(split)
    if limit:
        files = files[:limit]
    files = data.usable_files(files)
    if not files:
        raise EvalError(f"split {split!r} has no readable images ({dataset.describe()})")
    return files, dataset.describe()


# --------------------------------------------------------------------------- evaluation
def reconstruction_columns(images: np.ndarray, reconstructions, kind: str, window: int) -> dict[str, np.ndarray]:
    """Per-image sum of squared errors, SSIM and (for bce runs) binary cross-entropy."""
    columns = {
        "sse": np.asarray(vae.reconstruction_loss(images, reconstructions, "mse"), np.float64),
        "ssim": np.asarray(tf.image.ssim(images, reconstructions, max_val=1.0, filter_size=window), np.float64),
    }
    if kind == "bce":
        columns["bce"] = np.asarray(vae.reconstruction_loss(images, reconstructions, "bce"), np.float64)
    return columns


def collect(
    encoder: keras.Model,
    decoder: keras.Model,
    batches: Iterable,
    *,
    kind: str,
    variational: bool,
    seed: int,
    features: FeatureFn | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, FeatureMoments]]:
    """One pass over the batches: per-image columns (concatenated) and FID feature moments.

    The eps of the sampled z and the prior samples come from two generators spawned from
    `seed`, drawn batch after batch in file order, so they do not depend on the batch size.
    """
    posterior_rng, prior_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    columns: dict[str, list[np.ndarray]] = defaultdict(list)
    moments: dict[str, FeatureMoments] = defaultdict(FeatureMoments)
    for batch in batches:
        images = np.asarray(batch, dtype=np.float32)
        window = min(SSIM_WINDOW, images.shape[1], images.shape[2])
        mu, log_var = (np.asarray(part, np.float32) for part in encoder(images, training=False))
        columns["mu"].append(mu)
        mean_reconstructions = np.asarray(decoder(mu, training=False))
        for name, column in reconstruction_columns(images, mean_reconstructions, kind, window).items():
            columns[f"mean_{name}"].append(column)
        if variational:
            columns["kl"].append(np.asarray(vae.kl_divergence(mu, log_var), np.float64))
            columns["kl_dims"].append(kl_per_dimension(mu, log_var))
            eps = posterior_rng.standard_normal(mu.shape, dtype=np.float32)
            sampled = np.asarray(decoder(mu + np.exp(0.5 * log_var) * eps, training=False))
            for name, column in reconstruction_columns(images, sampled, kind, window).items():
                columns[f"sample_{name}"].append(column)
        if features is not None:
            moments["real"].update(features(images))
            moments["reconstructions"].update(features(mean_reconstructions))
            if variational:
                prior = prior_rng.standard_normal(mu.shape, dtype=np.float32)
                moments["prior_samples"].update(features(np.asarray(decoder(prior, training=False))))
        if progress is not None:
            progress(len(images))
    if not columns:
        raise EvalError("no images could be decoded in this split")
    return {name: np.concatenate(parts) for name, parts in columns.items()}, dict(moments)


def reconstruction_summary(columns: dict[str, np.ndarray], prefix: str, kind: str, dims: int) -> tuple[dict, dict]:
    """Quality figures and the reconstruction term for the reconstructions of one kind of z,
    and the per-image likelihood terms (see likelihood_terms)."""
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
    variance = mu_variance(columns["mu"])
    results: dict = {"active_units": {"count": active_units(columns["mu"]), "threshold": ACTIVE_UNIT_THRESHOLD}}
    results["active_units"]["mu_variance"] = variance.tolist()
    results["posterior_mean"], _ = reconstruction_summary(columns, "mean", kind, dims)
    results["posterior_mean"]["loss_beta1"] = None
    if not variational:
        results["posterior_sample"] = None
        results["kl"] = None
        results["elbo"] = {
            "negative_elbo": None,
            "bits_per_dim": None,
            "bits_per_dim_8bit": None,
            "nll": None,
            "nll_constant": None,
            "decoder_variance": None,
            "note": "autoencoder: no posterior and no prior, so no KL and no ELBO",
        }
        return results
    kl = columns["kl"]
    kl_dims = columns["kl_dims"].mean(axis=0)
    results["posterior_mean"]["loss_beta1"] = results["posterior_mean"]["reconstruction"] + float(np.mean(kl))
    results["posterior_sample"], terms = reconstruction_summary(columns, "sample", kind, dims)
    results["posterior_sample"]["loss_beta1"] = results["posterior_sample"]["reconstruction"] + float(np.mean(kl))
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
    run_dir: Path,
    data_path: str | None = None,
    split: str = "test",
    limit: int = 0,
    batch_size: int = 64,
    seed: int = 0,
    fid: bool = False,
    inception_weights: str | None = None,
    features: FeatureFn | None = None,
    verbose: int = 1,
) -> dict:
    """Evaluate a run; returns the results dict that main() prints and writes.

    fid: compute FID with InceptionV3 (loaded after the run and data are checked; a failure
    to load it skips FID with a printed reason), or, when `features` is given, with that
    feature function instead (images [B, H, W, C] in [0, 1] -> [B, F]).
    """
    if limit < 0:
        raise EvalError(f"--limit must be 0 (all) or a positive count (got {limit})")
    if batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1 (got {batch_size})")
    run_dir = Path(run_dir)
    config, encoder, decoder = load_run(run_dir)
    data_path = data_path or config["data"]
    files, description = split_files(data_path, split, limit)
    size, channels = config["image_size"], config["channels"]
    dims = size * size * channels
    kind = config["reconstruction"]
    variational = config["model"] == "vae"
    if verbose:
        print(f"data: {description}; evaluating {len(files)} {split} images")
    source, skipped = None, None
    if not fid:
        features = None
    elif features is not None:
        source = "custom feature function"
    else:
        features, source = load_inception(inception_weights)
        if features is None:
            skipped, source = source, None
            print(f"FID skipped: {skipped}")
    batches = data.make_dataset(
        files, image_size=size, channels=channels, crop=config["crop"], batch_size=batch_size, cache="none"
    )
    # Keras' bar writes colour codes and backspaces: on a terminal only; logs get one final line.
    bar = (
        keras.utils.Progbar(len(files), unit_name="image", verbose=1 if sys.stdout.isatty() else 2) if verbose else None
    )
    started = time.perf_counter()
    columns, moments = collect(
        encoder,
        decoder,
        batches,
        kind=kind,
        variational=variational,
        seed=seed,
        features=features,
        progress=bar.add if bar else None,
    )
    results = {
        "format": EVAL_FORMAT,
        "run": str(run_dir),
        "data": str(data_path),
        "split": split,
        "count": len(columns["mu"]),
        "limit": limit,
        "seed": seed,
        "batch_size": batch_size,
        "model": config["model"],
        "reconstruction_kind": kind,
        "image_size": size,
        "channels": channels,
        "latent_dim": config["latent_dim"],
        "dims": dims,
        **summarize(columns, kind=kind, variational=variational, dims=dims),
        "fid": fid_summary(moments, variational, features is not None, source, skipped),
    }
    results["seconds"] = round(time.perf_counter() - started, 2)
    return results


def fid_summary(
    moments: dict[str, FeatureMoments], variational: bool, computed: bool, source: str | None, skipped: str | None
) -> dict:
    if not computed:
        return {"status": "skipped" if skipped else "off", "reason": skipped or "not asked for (--fid)"}
    count = moments["real"].count
    if count < 2:
        return {"status": "skipped", "reason": f"FID needs at least 2 images, the split has {count}"}
    feature_dim = len(moments["real"].mean())
    return {
        "status": "computed",
        "weights": source,
        "count": count,
        "feature_dim": feature_dim,
        "prior_samples": fid(moments["real"], moments["prior_samples"]) if variational else None,
        "reconstructions": fid(moments["real"], moments["reconstructions"]),
        "note": (
            f"N = {count} < {feature_dim} features: biased upward, compare only at equal N"
            if count < feature_dim
            else "compare only within this project at equal N"
        ),
    }


# --------------------------------------------------------------------------- output
def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 1e5 or 0 < abs(value) < 10**-digits:
        return f"{value:.4g}"
    return f"{value:.{digits}f}"


def format_table(results: dict) -> str:
    """The results as a readable text table."""
    mean, sample = results["posterior_mean"], results["posterior_sample"] or {}
    kind = results["reconstruction_kind"]
    lines = [
        f"evaluation of {results['run']} on {results['count']} {results['split']} images "
        f"({results['data']}; model {results['model']}, loss {kind}, latent {results['latent_dim']}, seed {results['seed']})",
        "",
        f"{'':44s} {'z = mu':>12s} {'z ~ q(z|x)':>12s}",
    ]

    def row(label: str, key: str, digits: int = 4) -> None:
        lines.append(f"{label:44s} {fmt(mean.get(key), digits):>12s} {fmt(sample.get(key), digits):>12s}")

    row("per-pixel MSE", "mse", 5)
    row("PSNR of the mean MSE (dB)", "psnr_of_mean_mse", 2)
    row("PSNR per image, averaged (dB)", "psnr_per_image", 2)
    row("SSIM", "ssim", 4)
    term = {"mse": "sum of squared errors", "bce": "binary cross-entropy", "gaussian": "Gaussian NLL, nats"}[kind]
    row(f"reconstruction term ({term})", "reconstruction", 2)
    row("loss at beta = 1 (reconstruction + KL)", "loss_beta1", 2)
    if mean.get("gaussian_variance") is not None:
        row("decoder sigma^2 fitted on the split", "gaussian_variance", 6)
    lines.append("")
    kl, elbo, units = results["kl"], results["elbo"], results["active_units"]
    if kl:
        lines.append(f"{'KL per image (nats)':44s} {kl['mean']:.2f} (std {kl['std']:.2f})")
        lines.append(
            f"{'KL per dimension (nats)':44s} max {kl['per_dim_max']:.3f}, median {kl['per_dim_median']:.4f}, "
            f"{kl['dims_above_threshold']} of {results['latent_dim']} above {kl['threshold_nats']}"
        )
    else:
        lines.append(f"{'KL per image (nats)':44s} n/a (autoencoder)")
    lines.append(
        f"{'active units (Var of mu > ' + str(units['threshold']) + ')':44s} {units['count']} of {results['latent_dim']}"
    )
    lines.append(f"{'negative ELBO (nats per image)':44s} {fmt(elbo['negative_elbo'], 2)}")
    lines.append(f"{'bits/dim (density on [0, 1])':44s} {fmt(elbo['bits_per_dim'], 4)}")
    lines.append(f"{'bits/dim (on 0..255, approximate)':44s} {fmt(elbo['bits_per_dim_8bit'], 4)}")
    lines.append(f"{'':44s} ({elbo['note']})")
    fid_result = results["fid"]
    if fid_result["status"] == "computed":
        lines.append(f"{'FID, prior samples':44s} {fmt(fid_result['prior_samples'], 2)}")
        lines.append(f"{'FID, reconstructions (z = mu)':44s} {fmt(fid_result['reconstructions'], 2)}")
        lines.append(f"{'':44s} ({fid_result['count']} images, {fid_result['weights']}; {fid_result['note']})")
    else:
        lines.append(f"{'FID':44s} {fid_result['status']}: {fid_result['reason']}")
    return "\n".join(lines)


def json_safe(value):
    """Non-finite floats -> None (JSON has no NaN or inf)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(results: dict, path: Path) -> Path:
    """The results as JSON, written atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(json_safe(results), indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate a trained run on real images: MSE, PSNR, SSIM, loss terms, negative ELBO and "
        "bits/dim, KL per dimension, active units, and optionally FID. Prints a table and writes "
        "RUN/eval_<split>.json.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--run", required=True, help="run folder written by train.py (runs/<name>)")
    parser.add_argument(
        "--data", metavar="PATH", help="CelebA root or folder of faces (default: the data folder in the run's config)"
    )
    parser.add_argument(
        "--split", choices=("train", "validation", "test", "all"), default="test", help="which images to evaluate"
    )
    parser.add_argument(
        "--limit", type=int, default=0, metavar="N", help="evaluate the first N images of the split only (0: all)"
    )
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch")
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the sampled z and of the prior samples for FID"
    )
    parser.add_argument("--fid", action="store_true", help="also compute FID (InceptionV3, ImageNet weights)")
    parser.add_argument(
        "--inception-weights",
        metavar="PATH",
        help=f"local InceptionV3 weights for --fid ({INCEPTION_WEIGHTS_FILE}); "
        "without it Keras tries to download them, and FID is skipped if that fails",
    )
    parser.add_argument("--out", metavar="PATH", help="JSON file to write (default: RUN/eval_<split>.json)")
    parser.add_argument("--verbose", type=int, choices=(0, 1), default=1, help="0: only the table; 1: progress too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        results = evaluate(
            Path(args.run),
            data_path=args.data,
            split=args.split,
            limit=args.limit,
            batch_size=args.batch_size,
            seed=args.seed,
            fid=args.fid,
            inception_weights=args.inception_weights,
            verbose=args.verbose,
        )
    except (EvalError, train.RunError, RunFolderError, data.DataError) as error:
        sys.exit(f"error: {error}")
    path = write_results(results, Path(args.out) if args.out else Path(args.run) / f"eval_{args.split}.json")
    print(format_table(results))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
