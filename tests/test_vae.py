"""vae.py: shapes, reparameterization gradients, loss math and the beta schedule."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO

import runs
import train_cli
import vae
from recipe import ModelConfig

TINY_MODEL = ModelConfig(image_size=16, latent_dim=4, filters=(4, 8), hidden_units=8, output_filters=0, adversarial=0.0)


@pytest.mark.parametrize(("image_size", "channels"), [(64, 3), (64, 1), (128, 3), (128, 1)])
@pytest.mark.parametrize("upsampling", vae.UPSAMPLING_MODES)
def test_shapes(image_size, channels, upsampling):
    config = ModelConfig(
        image_size=image_size, channels=channels, latent_dim=16, filters=(4, 8, 8, 16), hidden_units=16
    )
    model = vae.build_vae(replace(config, upsampling=upsampling))
    images = np.random.default_rng(0).random((2, image_size, image_size, channels), dtype=np.float32)
    mu, log_var = model.encoder(images)
    assert mu.shape == (2, 16) and log_var.shape == (2, 16)
    decoded = model.decoder(mu).numpy()
    assert decoded.shape == (2, image_size, image_size, channels)
    assert decoded.min() >= 0.0 and decoded.max() <= 1.0
    assert model(images, training=True).shape == images.shape


def test_default_architecture_is_about_four_million_parameters():
    model = vae.build_vae(ModelConfig())
    total = model.encoder.count_params() + model.decoder.count_params()
    assert 3_000_000 < total < 5_000_000
    assert [layer.filters for layer in model.encoder.layers if isinstance(layer, keras.layers.Conv2D)] == [
        32,
        64,
        128,
        256,
    ]


def test_image_size_must_halve_cleanly():
    with pytest.raises(ValueError, match="multiple of 2\\^4 = 16"):
        vae.build_vae(ModelConfig(image_size=40))


def test_reparameterization_gradient_reaches_mu_and_log_var():
    sampling = vae.Sampling(seed=1)
    mu = tf.Variable(np.array([[0.5, -1.0]], np.float32))
    log_var = tf.Variable(np.array([[0.2, -0.4]], np.float32))
    with tf.GradientTape() as tape:
        z = sampling([mu, log_var])
        total = tf.reduce_sum(z)
    grad_mu, grad_log_var = tape.gradient(total, [mu, log_var])
    np.testing.assert_allclose(grad_mu.numpy(), 1.0)
    # dz/dlog_var = 0.5 * exp(0.5 * log_var) * eps, with eps = (z - mu) / exp(0.5 * log_var)
    eps = (z.numpy() - mu.numpy()) / np.exp(0.5 * log_var.numpy())
    np.testing.assert_allclose(grad_log_var.numpy(), 0.5 * np.exp(0.5 * log_var.numpy()) * eps, rtol=1e-5)
    assert np.all(grad_log_var.numpy() != 0)


def test_sampling_has_the_posterior_moments():
    sampling = vae.Sampling(seed=3)
    mu = np.full((20000, 2), [1.0, -2.0], np.float32)
    log_var = np.full((20000, 2), [0.0, np.log(0.25)], np.float32)
    z = sampling([mu, log_var]).numpy()
    np.testing.assert_allclose(z.mean(axis=0), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(z.std(axis=0), [1.0, 0.5], rtol=0.03)


def test_closed_form_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mu = rng.normal(0, 1, (1, 4)).astype(np.float32)
    log_var = rng.normal(0, 0.5, (1, 4)).astype(np.float32)
    sigma = np.exp(0.5 * log_var)
    z = mu + sigma * rng.standard_normal((400_000, 4))
    log_q = -0.5 * (((z - mu) / sigma) ** 2 + np.log(2 * np.pi) + log_var).sum(axis=1)
    log_p = -0.5 * (z**2 + np.log(2 * np.pi)).sum(axis=1)
    monte_carlo = np.mean(log_q - log_p)
    closed_form = float(vae.kl_divergence(mu, log_var)[0])
    assert closed_form == pytest.approx(monte_carlo, abs=0.02)
    assert float(vae.kl_divergence(np.zeros((1, 4)), np.zeros((1, 4)))[0]) == pytest.approx(0.0, abs=1e-7)


def test_reconstruction_losses_on_hand_made_tensors():
    x = np.array([[[[0.0], [1.0]], [[0.5], [0.25]]]], np.float32)  # one 2x2 grayscale image
    x_hat = np.array([[[[0.5], [0.5]], [[0.5], [0.5]]]], np.float32)
    assert float(vae.reconstruction_loss(x, x_hat, "mse")[0]) == pytest.approx(0.25 + 0.25 + 0 + 0.0625)
    assert float(vae.per_pixel_mse(x, x_hat)) == pytest.approx(0.5625 / 4)
    # BCE against x_hat = 0.5 is log(2) per pixel whatever the target
    assert float(vae.reconstruction_loss(x, x_hat, "bce")[0]) == pytest.approx(4 * math.log(2), rel=1e-5)
    # Calibrated Gaussian: sigma^2 = mean squared error -> D/2 * (log(2 pi sigma^2) + 1)
    variance = 0.5625 / 4
    expected = 4 / 2 * (math.log(2 * math.pi * variance) + 1)
    assert float(vae.reconstruction_loss(x, x_hat, "gaussian")[0]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        vae.reconstruction_loss(x, x_hat, "l1")


def test_gaussian_loss_is_finite_for_a_perfect_reconstruction():
    x = np.full((2, 4, 4, 3), 0.3, np.float32)
    assert np.isfinite(vae.reconstruction_loss(x, x, "gaussian")).all()


def test_beta_schedules():
    steps = np.array([0, 50, 100, 150], np.float32)
    np.testing.assert_allclose(vae.beta_schedule(steps, 2.0), [2, 2, 2, 2])
    np.testing.assert_allclose(vae.beta_schedule(steps, 2.0, warmup_steps=100), [0, 1, 2, 2])
    # cycles of 100 steps, ramping over the first half of each
    np.testing.assert_allclose(
        vae.beta_schedule(np.array([0, 25, 50, 99, 100, 125]), 1.0, cycle_steps=100), [0, 0.5, 1, 1, 0, 0.5]
    )
    np.testing.assert_allclose(
        vae.beta_schedule(np.array([0, 10, 20, 30]), 1.0, warmup_steps=20, cycle_steps=30), [0, 0.5, 1, 0]
    )


def test_train_step_reports_every_metric_and_updates_step():
    model = vae.build_vae(replace(TINY_MODEL, beta=1.0, beta_warmup_steps=10))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    history = model.fit(images, epochs=2, batch_size=4, verbose=0)
    assert set(history.history) == {"loss", "reconstruction", "kl", "mse", "beta"}
    assert int(model.optimizer.iterations.numpy()) == 4
    assert history.history["beta"][1] == pytest.approx((2 + 3) / 2 / 10)  # steps 2 and 3 of the warm-up
    results = model.evaluate(images, batch_size=4, verbose=0, return_dict=True)
    assert results["mse"] == pytest.approx(float(vae.per_pixel_mse(images, model(images))), rel=1e-4)


def test_autoencoder_has_no_kl_and_skips_the_log_var_head():
    model = vae.build_vae(replace(TINY_MODEL, channels=1, model="ae"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = model.encoder.get_layer("log_var").get_weights()[0].copy()
    images = np.random.default_rng(0).random((8, 16, 16, 1), dtype=np.float32)
    history = model.fit(images, epochs=1, batch_size=4, verbose=0)
    assert history.history["kl"] == [0.0]
    assert history.history["loss"][0] == pytest.approx(history.history["reconstruction"][0])
    np.testing.assert_array_equal(model.encoder.get_layer("log_var").get_weights()[0], before)


TINY = {
    "image_size": 16, "channels": 3, "latent_dim": 4, "filters": [4, 8], "hidden_units": 8, "upsampling": "nearest",
    "beta": 0.5, "beta_warmup_steps": 0, "beta_cycle_steps": 0, "seed": 0, "learning_rate": 1e-2, "epochs": 1,
}  # fmt: skip
PLAIN = {"output_filters": 0, "adversarial": 0.0}  # not the default recipe's output block and discriminator phase


@pytest.mark.parametrize("kind", ["vae", "ae"])
@pytest.mark.parametrize("reconstruction", vae.RECONSTRUCTION_LOSSES)
def test_ema_weights_go_back_to_the_variables_they_average(kind, reconstruction):
    """fit ends by copying the EMA weights into the model: each into its own variable (an
    autoencoder's optimizer trains fewer variables than the model has), equal to numpy's average,
    whose momentum at step k warms up as min(0.5, (1 + k) / (10 + k))."""
    momentum = 0.5
    config = {**TINY, **PLAIN, "model": kind, "reconstruction": reconstruction, "ema": momentum}
    keras.utils.set_random_seed(0)
    model = vae.model_from_config(config)
    model.compile(optimizer=vae.make_optimizer(config))
    model.optimizer.build(model.trained_variables())  # as train.py builds it
    initial = {id(v): v.numpy().copy() for v in model.trainable_variables}
    trained = {id(v) for v in model.trained_variables()}
    averages: dict[int, np.ndarray] = {}

    def average(batch, logs):  # the update Keras documents, from the weights after each step
        warmed_up = min(momentum, (1 + batch) / (10 + batch))
        for v in model.trainable_variables:
            if id(v) in trained:
                averages[id(v)] = warmed_up * averages[id(v)] + (1 - warmed_up) * v.numpy() if batch else v.numpy()

    images = np.random.default_rng(0).random((12, 16, 16, 3), dtype=np.float32)
    model.fit(
        images, epochs=1, batch_size=4, verbose=0, callbacks=[keras.callbacks.LambdaCallback(on_batch_end=average)]
    )
    assert len(trained) < len(initial) if kind == "ae" else len(trained) == len(initial)
    for v in model.trainable_variables:
        expected = averages[id(v)] if id(v) in trained else initial[id(v)]
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_figures_are_means_per_image_over_uneven_batches():
    """5 images in batches of 2, 2 and 1: each figure is the mean over the images, as numpy gives it
    from the model's own outputs, not the mean of the three batch means."""
    config = {**TINY, **PLAIN, "model": "ae", "reconstruction": "mse", "ema": 0.0}
    keras.utils.set_random_seed(0)
    model = vae.model_from_config(config)
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # the weights stay put, so numpy sees the same model
    images = np.random.default_rng(1).random((5, 16, 16, 3), dtype=np.float32)
    batches = [images[:2], images[2:4], images[4:]]

    def per_image_errors(training: bool) -> np.ndarray:
        errors = []
        for batch in batches:  # in training, batch normalisation uses each batch's own statistics
            decoded = model.decoder(model.encoder(batch, training=training)[0], training=training)
            errors.append(((np.asarray(decoded) - batch) ** 2).reshape(len(batch), -1))
        return np.concatenate(errors)

    trained = model.fit(images, epochs=1, batch_size=2, shuffle=False, verbose=0).history
    validated = model.evaluate(images, batch_size=2, verbose=0, return_dict=True)
    validation_errors = per_image_errors(False)  # first: a forward pass in training updates the BN statistics
    for figures, errors in ((trained, per_image_errors(True)), (validated, validation_errors)):
        figures = {name: np.ravel(value)[-1] for name, value in figures.items()}
        assert figures["mse"] == pytest.approx(errors.mean(), rel=1e-4)
        assert figures["reconstruction"] == pytest.approx(errors.sum(axis=1).mean(), rel=1e-4)
        assert figures["loss"] == pytest.approx(errors.sum(axis=1).mean(), rel=1e-4)


def test_variational_figures_are_means_per_image_over_uneven_batches():
    config = {**TINY, "model": "vae", "reconstruction": "bce", "ema": 0.0}
    keras.utils.set_random_seed(0)
    model = vae.model_from_config(config)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    images = np.random.default_rng(2).random((5, 16, 16, 3), dtype=np.float32)
    figures = model.evaluate(images, batch_size=2, verbose=0, return_dict=True)
    mu, log_var = (np.asarray(t, np.float64) for t in model.encoder(images, training=False))
    decoded = np.clip(np.asarray(model.decoder(mu, training=False), np.float64), vae.BCE_EPSILON, 1 - vae.BCE_EPSILON)
    bce = -(images * np.log(decoded) + (1 - images) * np.log(1 - decoded)).reshape(5, -1).sum(axis=1)
    kl = -0.5 * (1 + log_var - mu**2 - np.exp(log_var)).sum(axis=1)
    assert figures["reconstruction"] == pytest.approx(bce.mean(), rel=1e-4)
    assert figures["kl"] == pytest.approx(kl.mean(), rel=1e-4)
    assert figures["loss"] == pytest.approx((bce + 0.5 * kl).mean(), rel=1e-4)
    assert figures["mse"] == pytest.approx(((decoded - images) ** 2).mean(), rel=1e-3)


GPU_FREE = None
XEON = "fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
EPYC_ZEN4 = "fpu sse2 avx2 avx512f avx512_bf16"
EPYC_ZEN3 = "fpu sse2 avx2 fma"


@pytest.mark.parametrize(
    ("setting", "flags", "gpu", "policy", "reason"),
    [
        ("auto", XEON, GPU_FREE, "mixed_bfloat16", "CPU has amx_bf16"),
        ("auto", EPYC_ZEN4, GPU_FREE, "mixed_bfloat16", "CPU has avx512_bf16"),
        ("auto", EPYC_ZEN3, GPU_FREE, "float32", "CPU has neither amx_bf16 nor avx512_bf16"),
        ("auto", "", GPU_FREE, "float32", "CPU has neither amx_bf16 nor avx512_bf16"),  # no /proc/cpuinfo
        ("auto", "avx512_bf16x", GPU_FREE, "float32", "CPU has neither amx_bf16 nor avx512_bf16"),  # whole flags
        ("auto", XEON, (8, 6), "mixed_float16", "GPU has tensor cores (compute capability 8.6)"),
        ("auto", XEON, (7, 0), "mixed_float16", "GPU has tensor cores (compute capability 7.0)"),
        ("auto", XEON, (6, 1), "float32", "GPU has no tensor cores (compute capability 6.1, below 7.0)"),
        ("off", XEON, GPU_FREE, "float32", "--mixed-precision off"),
        ("off", XEON, (8, 0), "float32", "--mixed-precision off"),
        ("on", EPYC_ZEN3, GPU_FREE, "mixed_bfloat16", "--mixed-precision on, on a CPU"),
        ("on", EPYC_ZEN3, (6, 1), "mixed_float16", "--mixed-precision on, on a GPU"),
    ],
)
def test_choose_precision(setting, flags, gpu, policy, reason):
    assert vae.choose_precision(setting, flags, gpu) == (policy, reason)


def test_a_run_keeps_the_precision_it_began_with():
    recorded = {"mixed_precision": "mixed_float16", "mixed_precision_reason": "GPU has tensor cores"}
    assert vae.run_precision(recorded) == ("mixed_float16", "GPU has tensor cores")
    assert vae.run_precision({"mixed_precision": "off"}) == ("float32", "--mixed-precision off")
    with pytest.raises(ValueError, match="choose one of auto, on, off"):
        vae.choose_precision("fast", XEON, None)


def test_help_answers_at_once_without_tensorflow():
    script = "import runpy, sys; sys.argv = ['vae.py', '--help']\ntry: runpy.run_path('vae.py', run_name='__main__')\n"
    script += "except SystemExit: pass\nprint('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    assert "--latent" in result.stdout and result.stdout.splitlines()[-1] == "False"


def layout(part: keras.Model) -> list[tuple[str, tuple]]:
    """The path (layer and name) and shape of each variable of an encoder or decoder."""
    return [(v.path, tuple(v.shape)) for v in part.variables]


def shapes(model: vae.VAE) -> tuple:
    return layout(model.encoder), layout(model.decoder), len(model.variables)


def test_new_options_leave_the_encoder_and_the_old_configs_as_they_were(tmp_path):
    """A config.json without the settings added since (decoder filters, the output block, the adversarial term, the
    learning-rate schedule, the split, the precision policy, mirroring) reads as the run it was made with."""
    older = {"format": runs.RUN_FORMAT, **TINY, "model": "vae", "reconstruction": "mse", "ema": 0.0}
    (tmp_path / "config.json").write_text(json.dumps({**older, "mixed_precision": True}))
    config = runs.read_config(tmp_path)
    assert {key: config[key] for key in config.keys() - older.keys()} == {
        "decoder_filters": None, "output_filters": 0, "adversarial": 0.0, "adversarial_start": 0, "discriminator_filters": 64,
        "lr_schedule": "constant", "lr_warmup_steps": 0, "train_split": "train", "mixed_precision": "on",
        "flip": False, "run_dir": str(tmp_path),
    }  # fmt: skip
    model = vae.model_from_config(config)
    today = shapes(model)
    assert type(model) is vae.VAE
    assert shapes(vae.model_from_config({**config, "decoder_filters": None})) == today
    assert shapes(vae.model_from_config({**config, "decoder_filters": [4, 8]})) == today
    wide = vae.model_from_config({**config, "decoder_filters": [16, 32]})
    assert layout(wide.encoder) == today[0] and len(wide.variables) == today[2]
    convolutions = [layer for layer in wide.decoder.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.filters for layer in convolutions] == [16, 3]
    assert wide.decoder.get_layer("project").units == 4 * 4 * 32
    assert wide(np.zeros((2, 16, 16, 3), np.float32)).shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="one width per encoder block"):
        vae.model_from_config({**config, "decoder_filters": [16, 32, 64]})
    adversarial = vae.model_from_config({**config, "adversarial": 0.5, "discriminator_filters": 4})
    widths = [layer.filters for layer in adversarial.discriminator.layers if isinstance(layer, keras.layers.Conv2D)]
    assert widths == [4, 8, 16, 32, 1] and adversarial.discriminator.output.shape == (None, 2, 2, 1)
    assert layout(adversarial.decoder) == today[1]


@pytest.mark.parametrize("upsampling", vae.UPSAMPLING_MODES)
def test_an_output_block_works_at_the_full_size(upsampling):
    """--output-filters: one more upsampling block, then the output convolution at the image's size."""
    model = vae.build_vae(replace(TINY_MODEL, upsampling=upsampling, output_filters=6))
    kinds = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)
    convolutions = [layer for layer in model.decoder.layers if isinstance(layer, kinds)]
    assert [(layer.filters, layer.output.shape[1]) for layer in convolutions[-3:]] == [(4, 8), (6, 16), (3, 16)]
    assert model.decoder.layers[-1].name == "convout" and model.decoder.output.shape == (None, 16, 16, 3)
    images = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    assert model(images, training=True).shape == images.shape


def tiny_model(adversarial: float, start: int = 0) -> vae.VAE:
    """A tiny VAE, compiled as train.py compiles it, with the same initial weights whatever `adversarial`."""
    keras.utils.set_random_seed(0)
    config = replace(TINY_MODEL, adversarial=adversarial, adversarial_start=start, discriminator_filters=4)
    model = vae.build_vae(config)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.optimizer.build(model.trained_variables())
    return model


def test_adversarial_term_counts_from_its_start_step_only():
    """Before the start step the model trains exactly as without the option and the discriminator
    stays put; from it on the discriminator learns, the decoder gets the GAN term's gradient and
    the encoder's weights stay as they were."""
    off, on = tiny_model(0.0), tiny_model(0.5, start=2)
    assert not hasattr(off, "discriminator") and len(off.trained_variables()) == len(on.trained_variables())
    images = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    discriminator = [v.numpy().copy() for v in on.discriminator.variables]
    fit = {"epochs": 1, "batch_size": 4, "shuffle": False, "verbose": 0}
    off.fit(images, **fit)
    history = on.fit(images, **fit).history  # steps 0 and 1
    assert set(history) == {"loss", "reconstruction", "kl", "mse", "beta", "d_loss", "g_loss", "adversarial_weight"}
    assert history["adversarial_weight"] == [0.0]
    for a, b in zip(off.variables, on.variables[: len(off.variables)], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    for before, v in zip(discriminator, on.discriminator.variables, strict=True):
        np.testing.assert_array_equal(before, v.numpy())
    off.fit(images, **fit)
    encoder = [v.numpy().copy() for v in on.encoder.trainable_variables]
    history = on.fit(images, **fit).history  # steps 2 and 3
    for before, v in zip(encoder, on.encoder.trainable_variables, strict=True):
        np.testing.assert_array_equal(before, v.numpy(), err_msg=v.path)
    assert all(np.isfinite(values).all() for values in history.values())
    assert history["adversarial_weight"][0] > 0
    assert any(
        not np.allclose(before, v.numpy()) for before, v in zip(discriminator, on.discriminator.variables, strict=True)
    )
    assert np.abs(off.decoder.layers[-1].kernel.numpy() - on.decoder.layers[-1].kernel.numpy()).max() > 1e-4


def test_an_unresolved_negative_start_trains_as_a_plain_vae():
    """The default start counts back from a run's end; a model built outside train.py, which does
    not resolve it, keeps its encoder training and its discriminator out."""
    plain, unresolved = tiny_model(0.0), tiny_model(0.5, start=-1110)
    images = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    fit = {"epochs": 1, "batch_size": 4, "shuffle": False, "verbose": 0}
    plain.fit(images, **fit)
    assert unresolved.fit(images, **fit).history["adversarial_weight"] == [0.0]
    for a, b in zip(plain.variables, unresolved.variables[: len(plain.variables)], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_adversarial_start_inside_a_fit_brings_the_discriminator_in_at_that_step():
    """One fit of 4 steps, start at step 2: steps 0-1 run a step traced without the discriminator,
    steps 2-3 one traced with it, without a new fit call."""
    model = tiny_model(0.5, start=2)
    discriminator = [v.numpy().copy() for v in model.discriminator.variables]
    traced = []
    recorder = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: traced.append(model.gan_traced))
    images = np.random.default_rng(3).random((8, 16, 16, 3), dtype=np.float32)
    history = model.fit(images, epochs=1, batch_size=2, shuffle=False, verbose=0, callbacks=[recorder]).history
    assert traced == [False, False, True, True]
    assert int(model.optimizer.iterations.numpy()) == 4
    assert history["adversarial_weight"][0] > 0 and np.isfinite(history["d_loss"][0])
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(discriminator, model.discriminator.variables, strict=True))


def test_adaptive_weight_is_the_ratio_of_the_gradient_norms_at_the_last_layer():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0, 1e-3, (3, 3, 4, 3)), rng.normal(0, 1, (3, 3, 4, 3))
    norm = np.linalg.norm
    assert float(vae.adaptive_weight(large, small, 0.5)) == pytest.approx(0.5 * norm(large) / (norm(small) + 1e-4))
    assert float(vae.adaptive_weight(large, np.zeros_like(large), 1.0)) == pytest.approx(1e4)  # clipped
    assert float(vae.adaptive_weight(large, np.full_like(large, np.nan), 1.0)) == 0.0  # float16 overflowed
    # In the train step: the weight of its first step, against the gradients taken here from the same weights.
    model = tiny_model(0.5)
    model.variational = False  # no sampling noise: the step sees the forward pass computed here
    images = np.random.default_rng(1).random((4, 16, 16, 3), dtype=np.float32)
    kernel = model.decoder.layers[-1].kernel
    with tf.GradientTape(persistent=True) as tape:
        decoded = model.decoder(model.encoder(images, training=True)[0], training=True)
        reconstruction = tf.reduce_mean(tf.reduce_sum(tf.square(decoded - images), axis=[1, 2, 3]))
        g_loss = -tf.reduce_mean(model.discriminator(decoded, training=True))
    expected = 0.5 * norm(tape.gradient(reconstruction, kernel)) / (norm(tape.gradient(g_loss, kernel)) + 1e-4)
    history = model.fit(images, epochs=1, batch_size=4, verbose=0).history
    assert history["adversarial_weight"][0] == pytest.approx(expected, rel=1e-4)


def test_lecam_penalty_charges_only_logits_past_the_other_sides_moving_mean():
    real, fake = np.array([[2.0], [0.5]]), np.array([[-3.0], [1.0]])
    expected = np.mean(np.square(np.maximum(real - 0.0, 0))) + np.mean(np.square(np.maximum(1.5 - fake, 0)))
    assert float(vae.lecam_penalty(real, fake, mean_real=1.5, mean_fake=0.0)) == pytest.approx(expected)
    assert float(vae.lecam_penalty(real, fake, mean_real=-5.0, mean_fake=5.0)) == 0.0  # within the anchors: free


def test_logit_means_follow_the_discriminator_steps_at_lecam_decay():
    model = tiny_model(0.5)
    images = np.random.default_rng(2).random((4, 16, 16, 3), dtype=np.float32)
    real = float(np.mean(model.discriminator(images, training=True)))  # the logits the step sees
    model.fit(images, epochs=1, batch_size=4, verbose=0)
    means = model.logit_means.means.numpy()
    assert means[0] == pytest.approx((1 - vae.LECAM_DECAY) * real, rel=1e-4) and means[1] != 0


def test_checkpoints_hold_the_discriminator_and_its_optimizer(tmp_path):
    model = tiny_model(0.5)
    images = np.random.default_rng(2).random((4, 16, 16, 3), dtype=np.float32)
    model.fit(images, epochs=1, batch_size=4, verbose=0)
    model.save_weights(tmp_path / "state.weights.h5")  # as train.py's epoch checkpoints
    restored = tiny_model(0.5)
    restored.load_weights(tmp_path / "state.weights.h5")
    assert int(restored.discriminator_optimizer.iterations.numpy()) == 1
    assert np.abs(restored.logit_means.means.numpy()).min() > 0  # the LeCam anchors, moved by the step
    pairs = [(model.variables, restored.variables), (model.optimizer_variables(), restored.optimizer_variables())]
    assert len(model.optimizer_variables()) == len(model.optimizer.variables) + len(
        model.discriminator_optimizer.variables
    )
    for saved, loaded in pairs:
        for a, b in zip(saved, loaded, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"decoder_filters": [16, 32, 64]},
        {"adversarial": 0.5, "discriminator_filters": 8},
        {"decoder_filters": [8, 24, 48], "adversarial": 1.0, "discriminator_filters": 4},
        {"output_filters": 16},
    ],
)
def test_memory_estimate_counts_the_weights_vae_builds(extra):
    """train.py refuses a run that cannot fit in memory from this estimate, made without TensorFlow:
    the kernels, within a few percent of what vae.py builds (biases and normalisations left out)."""
    config = {**vae.DEFAULT_RECIPE, "image_size": 16, "filters": [8, 16, 32], "hidden_units": 32, "latent_dim": 8}
    config |= {"adversarial": 0.0, "output_filters": 0, **extra}
    model = vae.model_from_config(config)
    parts = [model.encoder, model.decoder, *([model.discriminator] if config["adversarial"] else [])]
    built = sum(part.count_params() for part in parts)
    assert 0.95 * built <= train_cli.parameter_count(config) <= built


def test_mixed_float16_trains_the_adversarial_term():
    """Under mixed_float16 (a GPU's auto choice) the optimizers scale the losses: the adaptive
    weight's gradients must still reach the decoder's last layer, and the discriminator learn."""
    images = np.random.default_rng(4).random((8, 16, 16, 3), dtype=np.float32)
    with vae.dtype_policy("mixed_float16"):
        model = tiny_model(0.5)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    discriminator = [v.numpy().copy() for v in model.discriminator.variables]
    history = model.fit(images, epochs=2, batch_size=4, verbose=0).history
    assert all(np.isfinite(values).all() for values in history.values())
    assert min(history["adversarial_weight"]) > 0
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(discriminator, model.discriminator.variables, strict=True))
    # A loss scale so high that float16 overflows: the steps are skipped, the scale lowered, the figures finite.
    steps = int(model.optimizer.iterations.numpy())
    assert steps > 0
    model.optimizer.dynamic_scale.assign(2.0**40)
    history = model.fit(images, epochs=1, batch_size=4, verbose=0).history
    assert all(np.isfinite(values).all() for values in history.values())
    assert int(model.optimizer.iterations.numpy()) == steps and float(model.optimizer.dynamic_scale) < 2.0**40


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_recomputed_batch_norm_statistics_are_the_plain_means_over_the_batches(kind):
    """Each BatchNorm layer ends with the mean of its inputs' batch means and batch variances,
    the encoder's over the images and the decoder's over z (sampled for a VAE, the mean for an
    autoencoder), and keeps its own momentum."""
    keras.utils.set_random_seed(0)
    model = vae.model_from_config({**TINY, "model": kind})
    rng, noise = np.random.default_rng(1), np.random.default_rng(3)
    batches = [rng.random((6, 16, 16, 3), dtype=np.float32) for _ in range(3)]
    encoder_conv = keras.Model(model.encoder.input, model.encoder.get_layer("conv0").output)
    decoder_conv = keras.Model(model.decoder.input, model.decoder.get_layer("conv0").output)
    inputs = {"encoder": [], "decoder": []}  # what each first BatchNorm sees, per batch
    for batch in batches:
        inputs["encoder"].append(encoder_conv(batch).numpy())
        # In training mode BatchNorm normalises with the batch's own statistics: these are the
        # encoder's outputs during the recomputation, whatever its moving statistics.
        mu, log_var = (part.numpy() for part in model.encoder(batch, training=True))
        z = mu + np.exp(0.5 * log_var) * noise.standard_normal(mu.shape) if kind == "vae" else mu
        inputs["decoder"].append(decoder_conv(z.astype(np.float32)).numpy())
    vae.recompute_batch_norm(model, batches, seed=3)
    for part, seen in inputs.items():
        norm = getattr(model, part).get_layer("bn0")
        want_mean = np.mean([x.mean(axis=(0, 1, 2)) for x in seen], axis=0)
        want_variance = np.mean([x.var(axis=(0, 1, 2)) for x in seen], axis=0)
        np.testing.assert_allclose(norm.moving_mean.numpy(), want_mean, rtol=1e-4, atol=1e-6, err_msg=part)
        np.testing.assert_allclose(norm.moving_variance.numpy(), want_variance, rtol=1e-4, atol=1e-6, err_msg=part)
        assert norm.momentum == vae.BN_MOMENTUM
