"""evaluate.py: metric math on known answers, and end to end on a tiny run trained here."""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import data
import epoch_log
import evaluate
import vae
from errors import UserError
from runs import load_decodable, open_backend

LATENT, SIZE = 8, 16


# --------------------------------------------------------------------------- metric math
def test_psnr_of_known_mse():
    assert evaluate.psnr(0.012) == pytest.approx(19.208, abs=1e-3)  # the "MSE 0.012 (PSNR 19.2 dB)" convention
    np.testing.assert_allclose(evaluate.psnr(np.array([1.0, 0.1, 0.01, 0.001])), [0.0, 10.0, 20.0, 30.0])
    assert evaluate.psnr(0.01 * 255**2, max_val=255.0) == pytest.approx(20.0)
    assert evaluate.psnr(0.0) == pytest.approx(100.0)  # exact reconstructions: floored, not inf


def test_active_units_on_a_toy_mu_matrix():
    mu = np.array(
        [
            [0.0, 1.0, 0.00, 5.0],
            [0.2, 1.0, 0.05, -5.0],
            [0.4, 1.0, 0.10, 5.0],
        ]
    )
    # variances over the rows (ddof 0): 0.0267, 0, 0.00167, 22.2
    np.testing.assert_allclose(evaluate.mu_variance(mu), [0.08 / 3, 0.0, 0.005 / 3, 200 / 9])
    assert evaluate.active_units(mu) == 2
    assert evaluate.active_units(mu, threshold=0.001) == 3
    assert evaluate.active_units(mu[:1]) == 0  # one image: nothing varies


def test_kl_per_dimension_sums_to_the_training_kl():
    rng = np.random.default_rng(0)
    mu, log_var = rng.normal(size=(5, 7)), rng.normal(scale=0.5, size=(5, 7))
    per_dim = evaluate.kl_per_dimension(mu, log_var)
    assert per_dim.shape == (5, 7) and (per_dim >= 0).all()
    np.testing.assert_allclose(per_dim.sum(axis=1), np.asarray(vae.kl_divergence(mu, log_var)), rtol=1e-5)
    assert evaluate.kl_per_dimension(np.zeros(3), np.zeros(3)) == pytest.approx([0.0, 0.0, 0.0])


def test_bits_per_dim():
    dims = 64 * 64 * 3
    assert evaluate.bits_per_dim(3.0 * dims * math.log(2.0), dims) == pytest.approx(3.0)
    summary = evaluate.elbo_summary(np.array([100.0, 200.0]), np.array([10.0, 30.0]), dims=12)
    assert summary["negative_elbo"] == pytest.approx(170.0)
    assert summary["bits_per_dim"] == pytest.approx(170.0 / (12 * math.log(2.0)))
    assert summary["bits_per_dim_8bit"] == pytest.approx(summary["bits_per_dim"] + math.log2(255.0))


def pixels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(3, 4, 4, 3)).astype(np.float32)
    return x, np.clip(x + rng.normal(scale=0.1, size=x.shape), 0.0, 1.0).astype(np.float32)


def test_mse_term_plus_constant_is_the_gaussian_nll_with_variance_one_half():
    x, x_hat = pixels()
    dims = 4 * 4 * 3
    sse = np.asarray(vae.reconstruction_loss(x, x_hat, "mse"), np.float64)
    variance = 0.5
    explicit = np.sum(
        0.5 * np.log(2 * np.pi * variance) + (x - x_hat).astype(np.float64) ** 2 / (2 * variance), axis=(1, 2, 3)
    )
    terms = evaluate.likelihood_terms("mse", sse, None, dims)
    np.testing.assert_allclose(terms["reconstruction"], sse)
    np.testing.assert_allclose(terms["nll"], explicit, rtol=1e-6)
    assert terms["nll_constant"] == pytest.approx(dims / 2 * math.log(math.pi))


def test_gaussian_term_over_one_batch_is_the_training_loss():
    x, x_hat = pixels(1)
    dims = 4 * 4 * 3
    sse = np.asarray(vae.reconstruction_loss(x, x_hat, "mse"), np.float64)
    terms = evaluate.likelihood_terms("gaussian", sse, None, dims)
    # the whole "split" is this batch, so sigma^2 is the batch's MSE, as in training
    np.testing.assert_allclose(terms["nll"], np.asarray(vae.reconstruction_loss(x, x_hat, "gaussian")), rtol=1e-5)
    assert terms["variance"] == pytest.approx(float(np.mean((x - x_hat) ** 2)), rel=1e-5)
    exact = evaluate.likelihood_terms("gaussian", np.zeros(3), None, dims)
    assert exact["variance"] == pytest.approx(vae.MIN_GAUSSIAN_SIGMA**2)
    assert np.isfinite(exact["nll"]).all()


def test_bce_and_autoencoders_have_no_elbo():
    x, x_hat = pixels(2)
    sse = np.asarray(vae.reconstruction_loss(x, x_hat, "mse"))
    bce = np.asarray(vae.reconstruction_loss(x, x_hat, "bce"))
    terms = evaluate.likelihood_terms("bce", sse, bce, 48)
    assert terms["nll"] is None
    np.testing.assert_allclose(terms["reconstruction"], bce)
    assert set(evaluate.elbo_summary(None, np.ones(3), 48).values()) == {None}
    assert set(evaluate.elbo_summary(np.ones(3), None, 48).values()) == {None}
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        evaluate.likelihood_terms("l1", sse, None, 48)


def test_frechet_distance_diagonal_known_answer():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))  # 5 + 1 + 1 + 0
    assert expected == pytest.approx(7.0)
    assert evaluate.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(7.0)
    # one dimension: (m1 - m2)^2 + (std1 - std2)^2
    assert evaluate.frechet_distance(np.array([1.0]), np.array([[9.0]]), np.array([-1.0]), np.array([[1.0]])) == (
        pytest.approx(4.0 + 4.0)
    )


def random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_frechet_distance_full_covariances_known_answers():
    rng = np.random.default_rng(0)
    s1, s2 = random_covariance(rng, 6), random_covariance(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    assert evaluate.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8 * np.trace(s1))
    assert evaluate.frechet_distance(mu1, s1, mu2, s1) == pytest.approx(np.sum((mu1 - mu2) ** 2))
    # sigma2 = c^2 sigma1: tr(sigma1) (1 - c)^2
    assert evaluate.frechet_distance(mu1, s1, mu1, 9.0 * s1) == pytest.approx(4.0 * np.trace(s1))
    # symmetric for non-commuting covariances
    forward, backward = evaluate.frechet_distance(mu1, s1, mu2, s2), evaluate.frechet_distance(mu2, s2, mu1, s1)
    assert forward > 0 and forward == pytest.approx(backward, rel=1e-9)


def test_frechet_distance_non_commuting_2x2_closed_form():
    # for 2x2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)), and sigma1 sigma2 has the eigenvalues of
    # sigma1^1/2 sigma2 sigma1^1/2, so the cross term is sqrt(tr(s1 s2) + 2 sqrt(det s1 det s2))
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[1.0, -0.4], [-0.4, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.5, -1.0]), np.array([0.0, 1.0])
    cross = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross
    assert evaluate.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="shape mismatch"):
        evaluate.frechet_distance(mu1, s1, np.zeros(3), np.eye(3))


def test_feature_moments_stream_like_numpy():
    rng = np.random.default_rng(1)
    features = rng.normal(loc=3.0, size=(23, 5)) @ rng.normal(size=(5, 5))
    moments = evaluate.FeatureMoments()
    for start in range(0, 23, 7):
        moments.update(features[start : start + 7])
    assert moments.count == 23
    np.testing.assert_allclose(moments.mean(), features.mean(axis=0))
    np.testing.assert_allclose(moments.covariance(), np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- end to end
def evaluate_args(run: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["--run", str(run), "--data", str(data_dir), "--verbose", "0", *extra]


def test_validation_figures_match_the_training_history(tiny_run, kaggle_celeba):
    # 8 validation images in one batch of 8: history.csv's batch means are the image means
    results = evaluate.main(evaluate_args(tiny_run, kaggle_celeba, "--split", "validation", "--batch-size", "8"))
    last = epoch_log.read_history(tiny_run / "history.csv")[-1]
    assert results["count"] == 8
    assert results["posterior_mean"]["mse"] == pytest.approx(last["val_mse"], rel=1e-4)
    assert results["posterior_mean"]["reconstruction"] == pytest.approx(last["val_reconstruction"], rel=1e-4)
    assert results["kl"]["mean"] == pytest.approx(last["val_kl"], rel=1e-4)
    assert results["posterior_mean"]["loss_beta1"] == pytest.approx(last["val_loss"], rel=1e-4)


def test_test_split_writes_every_figure(tiny_run, kaggle_celeba, capsys):
    results = evaluate.main(evaluate_args(tiny_run, kaggle_celeba, "--split", "test", "--batch-size", "3"))
    written = json.loads((tiny_run / "eval_test.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert {"run", "data", "split", "count", "seed", "limit", "batch_size", "model", "reconstruction_kind"} <= set(
        written
    )
    assert (written["split"], written["count"], written["seed"], written["latent_dim"]) == ("test", 4, 0, LATENT)
    for z in ("posterior_mean", "posterior_sample"):
        figures = written[z]
        assert 0 < figures["mse"] < 1
        assert figures["psnr_of_mean_mse"] == pytest.approx(10 * math.log10(1 / figures["mse"]))
        assert figures["psnr_per_image"] >= figures["psnr_of_mean_mse"] - 1e-9  # Jensen: mean of -log >= -log of mean
        assert -1 <= figures["ssim"] <= 1
        assert figures["reconstruction"] == pytest.approx(figures["mse"] * SIZE * SIZE * 3, rel=1e-5)
    kl, units, elbo = written["kl"], written["active_units"], written["elbo"]
    assert kl["mean"] > 0 and len(kl["per_dim_mean"]) == LATENT
    assert sum(kl["per_dim_mean"]) == pytest.approx(kl["mean"], rel=1e-5)
    assert 0 <= units["count"] <= LATENT and len(units["mu_variance"]) == LATENT
    assert units["count"] == sum(v > 0.01 for v in units["mu_variance"])
    dims = SIZE * SIZE * 3
    assert elbo["nll"] == pytest.approx(written["posterior_sample"]["reconstruction"] + dims / 2 * math.log(math.pi))
    assert elbo["negative_elbo"] == pytest.approx(elbo["nll"] + kl["mean"])
    assert elbo["bits_per_dim"] == pytest.approx(elbo["negative_elbo"] / (dims * math.log(2)))
    assert written["fid"]["status"] == "off"
    table = capsys.readouterr().out
    for label in ("per-pixel MSE", "PSNR of the mean MSE", "SSIM", "active units", "negative ELBO", "bits/dim"):
        assert label in table
    # the same seed gives the same sampled z whatever the batch size; another seed another one
    again = evaluate.main(evaluate_args(tiny_run, kaggle_celeba, "--out", str(tiny_run / "again.json")))
    assert again["posterior_sample"]["mse"] == pytest.approx(results["posterior_sample"]["mse"], rel=1e-6)
    other = evaluate.main(
        evaluate_args(tiny_run, kaggle_celeba, "--seed", "1", "--limit", "4", "--out", str(tiny_run / "other.json"))
    )
    assert other["posterior_sample"]["mse"] != pytest.approx(results["posterior_sample"]["mse"], rel=1e-6)
    assert other["posterior_mean"]["mse"] == pytest.approx(results["posterior_mean"]["mse"], rel=1e-6)


def quadrant_means(images: np.ndarray) -> np.ndarray:
    """A stand-in feature model: the mean colour of each image quarter (12 features)."""
    n, h, w, c = images.shape
    return images.reshape(n, 2, h // 2, 2, w // 2, c).mean(axis=(2, 4)).reshape(n, -1)


def test_fid_with_a_stand_in_feature_model(tiny_run, kaggle_celeba):
    results = evaluate.evaluate(
        tiny_run, str(kaggle_celeba), split="validation", batch_size=3, fid=True, features=quadrant_means, verbose=0
    )
    fid = results["fid"]
    assert (fid["status"], fid["count"], fid["feature_dim"]) == ("computed", 8, 12)
    # recompute the reconstructions' FID in one go, away from the streamed moments
    backend = open_backend(tiny_run, "keras")
    images, failed = load_decodable(data.find_dataset(kaggle_celeba).split("validation"), backend)
    assert not failed
    reconstructions = backend.decode(backend.encode(images)[0])
    real, fake = quadrant_means(images).astype(np.float64), quadrant_means(reconstructions).astype(np.float64)
    expected = evaluate.frechet_distance(
        real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False)
    )
    assert fid["reconstructions"] == pytest.approx(expected, rel=1e-6)
    assert fid["reconstructions"] > 0 and math.isfinite(fid["prior_samples"]) and fid["prior_samples"] > 0
    # and the reconstruction figures, from the same images
    per_image_mse = np.mean((images.astype(np.float64) - reconstructions) ** 2, axis=(1, 2, 3))
    figures = results["posterior_mean"]
    assert figures["mse"] == pytest.approx(per_image_mse.mean(), rel=1e-5)
    assert figures["psnr_per_image"] == pytest.approx(np.mean(10 * np.log10(1 / per_image_mse)), rel=1e-5)
    assert figures["psnr_per_image"] > figures["psnr_of_mean_mse"]
    ssim = np.asarray(tf.image.ssim(images, reconstructions, max_val=1.0)).mean()
    assert figures["ssim"] == pytest.approx(ssim, abs=1e-4)  # numpy in float64, TensorFlow in float32


def test_fid_is_skipped_with_a_reason_when_weights_are_missing(tiny_run, kaggle_celeba, tmp_path, capsys):
    missing = tmp_path / "inception.h5"
    out = tmp_path / "eval.json"
    results = evaluate.main(
        evaluate_args(tiny_run, kaggle_celeba, "--fid", "--inception-weights", str(missing), "--out", str(out))
    )
    assert results["fid"]["status"] == "skipped" and "is not a file" in results["fid"]["reason"]
    printed = capsys.readouterr().out
    assert f"FID skipped: --inception-weights {missing} is not a file" in printed
    assert results["posterior_mean"]["mse"] > 0 and json.loads(out.read_text())["fid"]["status"] == "skipped"


def test_fid_with_inception_weights_from_a_local_file(tiny_run, kaggle_celeba, tmp_path):
    """--inception-weights takes the file Keras' InceptionV3 downloads (random weights here, written in the
    legacy HDF5 layout of Keras' published weight files: tests download nothing), and FID is computed on its
    2,048 pooled features."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    shape = evaluate.INCEPTION_SHAPE
    model = keras.applications.InceptionV3(include_top=False, pooling="avg", weights=None, input_shape=shape)
    weights = tmp_path / evaluate.INCEPTION_WEIGHTS_FILE
    with h5py.File(weights, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)
    flags = ("--split", "validation", "--limit", "2", "--fid", "--inception-weights", str(weights))
    results = evaluate.main(evaluate_args(tiny_run, kaggle_celeba, *flags, "--out", str(tmp_path / "eval.json")))
    fid = results["fid"]
    assert (fid["status"], fid["count"], fid["feature_dim"], fid["weights"]) == ("computed", 2, 2048, str(weights))
    assert all(fid[key] >= 0 for key in ("reconstructions", "prior_samples", "density_samples"))


def variant(run: Path, folder: Path, **changes) -> Path:
    """A copy of a run with config.json edited: the models are the same, the evaluation reads
    `model`, `reconstruction` and the shapes from the config."""
    folder.mkdir()
    for name in ("encoder.keras", "decoder.keras"):
        shutil.copy(run / name, folder / name)
    config = {**json.loads((run / "config.json").read_text()), **changes}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_autoencoder_bce_and_gaussian_runs(tiny_run, kaggle_celeba, tmp_path, capsys):
    args = ("--split", "validation", "--batch-size", "8")
    ae = evaluate.main(evaluate_args(variant(tiny_run, tmp_path / "ae", model="ae"), kaggle_celeba, *args))
    assert ae["kl"] is None and ae["posterior_sample"] is None and ae["elbo"]["negative_elbo"] is None
    assert 0 < ae["posterior_mean"]["mse"] < 1 and 0 <= ae["active_units"]["count"] <= LATENT
    assert "n/a (autoencoder)" in capsys.readouterr().out

    bce = evaluate.main(evaluate_args(variant(tiny_run, tmp_path / "bce", reconstruction="bce"), kaggle_celeba, *args))
    assert bce["elbo"]["negative_elbo"] is None and bce["elbo"]["bits_per_dim"] is None
    assert bce["posterior_mean"]["reconstruction"] > 0 and bce["kl"]["mean"] > 0
    assert "not a normalized likelihood" in capsys.readouterr().out

    gaussian_run = variant(tiny_run, tmp_path / "gaussian", reconstruction="gaussian")
    gaussian = evaluate.main(evaluate_args(gaussian_run, kaggle_celeba, *args))
    elbo, sample = gaussian["elbo"], gaussian["posterior_sample"]
    assert elbo["decoder_variance"] == pytest.approx(sample["mse"], rel=1e-5)
    dims = SIZE * SIZE * 3
    assert elbo["nll"] == pytest.approx(dims / 2 * (math.log(2 * math.pi * sample["mse"]) + 1), rel=1e-5)
    assert elbo["negative_elbo"] == pytest.approx(elbo["nll"] + gaussian["kl"]["mean"])


def test_results_that_cannot_be_written_are_one_line_after_the_table(
    tiny_run, kaggle_celeba, tmp_path, monkeypatch, capsys
):
    def disk_full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluate, "write_text_atomic", disk_full)
    out = tmp_path / "eval.json"
    with pytest.raises(UserError, match=f"^cannot write {out} \\(No space left on device\\); the figures above"):
        evaluate.main(evaluate_args(tiny_run, kaggle_celeba, "--limit", "4", "--out", str(out)))
    assert "per-pixel MSE" in capsys.readouterr().out and not out.exists()
    with pytest.raises(UserError, match="No space left on device"):
        evaluate.main(evaluate_args(tiny_run, kaggle_celeba, "--limit", "4", "--out", str(tmp_path / "new" / "e.json")))
    assert not (tmp_path / "new").exists()  # the folder made for it is gone


def test_out_over_one_of_the_images_is_refused_before_any_work(tiny_run, kaggle_celeba, monkeypatch):
    face = data.find_dataset(kaggle_celeba).split("test")[0]
    before = face.read_bytes()
    monkeypatch.setattr(evaluate, "collect", lambda *args, **kwargs: pytest.fail("no image may be decoded"))
    with pytest.raises(UserError, match=f"^--out {face} would overwrite the input {face}; give another"):
        evaluate.main(evaluate_args(tiny_run, kaggle_celeba, "--out", str(face)))
    assert face.read_bytes() == before


def test_errors_are_one_line(tiny_run, kaggle_celeba, tmp_path):
    with pytest.raises(UserError, match=r"^run folder .*missing does not exist"):
        evaluate.main(evaluate_args(tmp_path / "missing", kaggle_celeba))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^.*empty has no decoder.keras or decoder.onnx"):
        evaluate.main(evaluate_args(tmp_path / "empty", kaggle_celeba))
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(tiny_run / "config.json", untrained / "config.json")
    with pytest.raises(UserError, match=r"^.*untrained has no decoder.keras or decoder.onnx; train.py writes"):
        evaluate.main(evaluate_args(untrained, kaggle_celeba))
    mismatched = variant(tiny_run, tmp_path / "mismatched", latent_dim=LATENT + 1)
    with pytest.raises(UserError, match=r"^.*mismatched.*config.json describes .*come from different runs"):
        evaluate.main(evaluate_args(mismatched, kaggle_celeba))
    resized = variant(tiny_run, tmp_path / "resized", image_size=32)
    with pytest.raises(UserError, match=r"^.*come from different runs"):
        evaluate.main(evaluate_args(resized, kaggle_celeba))
    damaged = variant(tiny_run, tmp_path / "damaged")
    (damaged / "decoder.keras").write_bytes(b"not a keras file")
    with pytest.raises(UserError, match=r"^cannot load .*decoder.keras"):
        evaluate.main(evaluate_args(damaged, kaggle_celeba))
    with pytest.raises(UserError, match=r"^data folder .*nowhere does not exist"):
        evaluate.main(evaluate_args(tiny_run, tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"^--limit must be 0"):
        evaluate.main(evaluate_args(tiny_run, kaggle_celeba, "--limit", "-1"))
    with pytest.raises(UserError, match=r"^--seed must not be negative \(got -1\)$"):
        evaluate.main(evaluate_args(tiny_run, kaggle_celeba, "--seed", "-1"))
