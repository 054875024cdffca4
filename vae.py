"""Convolutional variational autoencoder for faces: model, loss and training precision.

The shape of the Keras VAE example: an encoder image -> (mu, log_var), a `Sampling` layer, a
decoder z -> image, and a `VAE(keras.Model)` with its own train_step/test_step; with `--model ae`
a plain autoencoder (z = mu, no KL). Under tf.distribute a step on N replicas equals the
single-device step. `AdversarialVAE` adds a patch discriminator's adaptively weighted hinge-loss
term, as in the autoencoders of latent diffusion.

    python vae.py --latent 128     # the architecture's summary and parameter count
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Iterator, Sequence

from recipe import (
    DEFAULT_RECIPE,
    PRECISION_POLICIES,
    PRECISION_SETTINGS,
    RECONSTRUCTION_LOSSES,
    UPSAMPLING_MODES,
    ModelConfig,
    model_config,
)
from runs import BCE_EPSILON, MIN_GAUSSIAN_SIGMA, check_architecture


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Print the encoder and decoder of the default VAE.")
    for flag, name, what in (
        ("--image-size", "image_size", "square image side"),
        ("--channels", "channels", "1 (grayscale) or 3 (RGB)"),
        ("--latent", "latent_dim", "latent dimension"),
    ):
        parser.add_argument(
            flag, type=int, default=DEFAULT_RECIPE[name], dest=name, metavar="N", help=f"{what} (default: %(default)s)"
        )
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and a bad flag answer here, before TensorFlow loads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, ops  # noqa: E402

BN_MOMENTUM = 0.9  # Keras' 0.99 averages the inference statistics over longer than a short run
DISCRIMINATOR_LEARNING_RATE = 2e-4  # constant, the usual rate of GAN discriminators with Adam
ADVERSARIAL_FIGURES = ("d_loss", "g_loss", "adversarial_weight")
LECAM_WEIGHT = 0.1  # of the LeCam term in the discriminator's loss (Tseng et al. 2021 use 0.1-0.3)
LECAM_DECAY = 0.99  # of the moving means of the discriminator's outputs that the LeCam term anchors to


# --------------------------------------------------------------------------- loss math
def kl_divergence(mu, log_var):
    """Closed-form KL(N(mu, exp(log_var)) || N(0, I)) per example, summed over latent dims."""
    mu = ops.cast(mu, "float32")
    log_var = ops.cast(log_var, "float32")
    return -0.5 * ops.sum(1.0 + log_var - ops.square(mu) - ops.exp(log_var), axis=-1)


def reconstruction_loss(x, x_hat, kind: str = "mse"):
    """Per-example loss summed over pixels: `mse`, `bce`, or `gaussian` (calibrated decoder variance, sigma-VAE)."""
    x = ops.cast(x, "float32")
    x_hat = ops.cast(x_hat, "float32")
    squared_error = ops.square(x - x_hat)
    if kind == "mse":
        per_pixel = squared_error
    elif kind == "bce":
        x_hat = ops.clip(x_hat, BCE_EPSILON, 1.0 - BCE_EPSILON)
        per_pixel = -(x * ops.log(x_hat) + (1.0 - x) * ops.log(1.0 - x_hat))
    elif kind == "gaussian":
        variance = ops.maximum(global_batch_mean(squared_error), MIN_GAUSSIAN_SIGMA**2)
        per_pixel = squared_error / (2.0 * variance) + 0.5 * ops.log(2.0 * math.pi * variance)
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {RECONSTRUCTION_LOSSES}")
    return ops.sum(per_pixel, axis=tuple(range(1, len(x.shape))))


def global_batch_mean(values):
    """The mean of `values` over the global batch (all replicas), without gradient: the gaussian
    loss's derivative in sigma^2 is zero at this maximum-likelihood value."""
    values = tf.cast(values, "float32")
    sums = tf.stack([tf.reduce_sum(values), tf.cast(tf.size(values, out_type=tf.int64), "float32")])
    replica = tf.distribute.get_replica_context()  # None in a cross-replica context
    if replica is not None and replica.num_replicas_in_sync > 1:
        sums = replica.all_reduce(tf.distribute.ReduceOp.SUM, sums)
    return tf.stop_gradient(sums[0] / sums[1])


def per_pixel_mse(x, x_hat):
    """Mean squared error over all pixels and channels, the figure runs compare on."""
    return ops.mean(ops.square(ops.cast(x, "float32") - ops.cast(x_hat, "float32")))


def beta_schedule(step, beta: float, warmup_steps: int = 0, cycle_steps: int = 0):
    """KL weight at optimizer step `step` (0-based): a linear ramp 0 -> beta over warmup_steps, then
    beta; with cycle_steps, cyclical annealing (Fu et al. 2019), each cycle ramping over warmup_steps
    (half the cycle when that is 0 or longer than the cycle) and then holding."""
    step = ops.cast(step, "float32")
    if cycle_steps > 0:
        ramp = warmup_steps if 0 < warmup_steps <= cycle_steps else cycle_steps / 2
        return beta * ops.minimum(1.0, ops.mod(step, cycle_steps) / ramp)
    if warmup_steps > 0:
        return beta * ops.minimum(1.0, step / warmup_steps)
    return beta * ops.ones_like(step)


# --------------------------------------------------------------------------- layers and models
class Sampling(layers.Layer):
    """Reparameterization trick: z = mu + exp(0.5 * log_var) * eps, eps ~ N(0, I), from a seeded
    generator whose state is saved with the weights, so a resumed run draws the noise of an
    uninterrupted one. Under tf.distribute each replica keeps its slice of the global batch's noise."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        mu, log_var = inputs
        replica = tf.distribute.get_replica_context()  # None in a cross-replica context
        replicas, index = (replica.num_replicas_in_sync, replica.replica_id_in_sync_group) if replica else (1, 0)
        batch, latent_dim = ops.shape(mu)
        eps = keras.random.normal((replicas * batch, latent_dim), dtype=mu.dtype, seed=self.seed_generator)
        return mu + ops.exp(0.5 * log_var) * eps[index * batch : (index + 1) * batch]

    def save_own_variables(self, store):
        store["0"] = self.seed_generator.state

    def load_own_variables(self, store):
        if "0" in store:  # a checkpoint without the state leaves the seed's
            self.seed_generator.state.assign(store["0"])


def build_encoder(config: ModelConfig) -> keras.Model:
    """Image [B, H, W, C] in [0, 1] -> (mu, log_var), each [B, latent_dim]."""
    check_architecture(config.image_size, config.filters)
    images = keras.Input((config.image_size, config.image_size, config.channels), name="image")
    x = images
    for index, width in enumerate(config.filters):
        x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, synchronized=True, name=f"bn{index}")(x)
        x = layers.ReLU(name=f"relu{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(config.hidden_units, activation="relu", name="hidden")(x)
    # Heads in float32 so the latent statistics stay exact under mixed precision.
    mu = layers.Dense(config.latent_dim, name="mu", dtype="float32")(x)
    log_var = layers.Dense(config.latent_dim, name="log_var", dtype="float32")(x)
    return keras.Model(images, [mu, log_var], name="encoder")


def build_decoder(config: ModelConfig) -> keras.Model:
    """z [B, latent_dim] -> image [B, H, W, C] in [0, 1], mirroring the encoder (`decoder_filters` in its order)."""
    filters = config.decoder_filters or config.filters
    if len(filters) != len(config.filters):
        raise ValueError(f"decoder filters {list(filters)} need one width per encoder block ({len(config.filters)})")
    if config.upsampling not in UPSAMPLING_MODES:
        raise ValueError(f"unknown upsampling {config.upsampling!r}; choose one of {UPSAMPLING_MODES}")
    start = config.image_size // 2 ** len(filters)
    z = keras.Input((config.latent_dim,), name="z")
    x = layers.Dense(start * start * filters[-1], activation="relu", name="project")(z)
    x = layers.Reshape((start, start, filters[-1]), name="reshape")(x)
    # Block i undoes encoder block i (doubling the size); the last convolution the first (-> C channels).
    # With --output-filters one more block reaches the full size, and the output convolution keeps it.
    widths = [*reversed(filters[:-1]), *([config.output_filters] if config.output_filters else [])]
    for index, width in enumerate(widths):
        x = upsample_conv(x, width, config.upsampling, name=str(index), use_bias=False)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, synchronized=True, name=f"bn{index}")(x)
        x = layers.ReLU(name=f"relu{index}")(x)
    output = {"activation": "sigmoid", "dtype": "float32"}
    if config.output_filters:
        images = layers.Conv2D(config.channels, 3, padding="same", name="convout", **output)(x)
    else:
        images = upsample_conv(x, config.channels, config.upsampling, name="out", **output)
    return keras.Model(z, images, name="decoder")


def upsample_conv(x, width: int, upsampling: str, name: str, **conv_args):
    """Double the spatial size: UpSampling2D + Conv2D, or one strided Conv2DTranspose."""
    if upsampling == "transpose":
        return layers.Conv2DTranspose(width, 3, strides=2, padding="same", name=f"deconv{name}", **conv_args)(x)
    x = layers.UpSampling2D(2, name=f"up{name}")(x)
    return layers.Conv2D(width, 3, padding="same", name=f"conv{name}", **conv_args)(x)


class VAE(keras.Model):
    """Encoder + Sampling + decoder, trained on reconstruction + beta * KL; a plain autoencoder when
    `config.model` is "ae" (z = mu, loss = reconstruction, the log_var head left untrained)."""

    def __init__(self, encoder: keras.Model, decoder: keras.Model, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.sampling = Sampling(seed=config.seed, name="sampling")
        self.config = config
        self.variational = config.model == "vae"
        self.trackers = [keras.metrics.Mean(name=name) for name in ("loss", "reconstruction", "kl", "mse", "beta")]

    @property
    def metrics(self):  # those Keras resets at the start of each epoch
        return self.trackers

    def build(self, input_shape):  # the encoder and decoder, functional models, are built already
        self.sampling.build([(None, self.config.latent_dim)] * 2)
        super().build(input_shape)

    def optimizer_variables(self) -> list:
        """The state of the model's optimizers: its training state beside the model's variables."""
        return list(self.optimizer.variables)

    def call(self, images, training: bool = False):
        mu, log_var = self.encoder(images, training=training)
        z = self.sampling([mu, log_var]) if (self.variational and training) else mu
        return self.decoder(z, training=training)

    def loss_terms(self, images, sample: bool, training: bool) -> dict:
        """Forward pass and all loss terms, in float32, averaged over the batch."""
        mu, log_var = self.encoder(images, training=training)
        z = self.sampling([mu, log_var]) if (self.variational and sample) else mu
        reconstructions = self.decoder(z, training=training)
        reconstruction = ops.mean(reconstruction_loss(images, reconstructions, self.config.reconstruction))
        if self.variational:
            kl = ops.mean(kl_divergence(mu, log_var))
            schedule = (self.config.beta, self.config.beta_warmup_steps, self.config.beta_cycle_steps)
            beta = beta_schedule(self.optimizer.iterations, *schedule)
        else:
            kl = beta = ops.convert_to_tensor(0.0)
        return {
            "loss": reconstruction + beta * kl,
            "reconstruction": reconstruction,
            "kl": kl,
            "mse": per_pixel_mse(images, reconstructions),
            "beta": beta,
            "reconstructions": reconstructions,
        }

    def trained_variables(self) -> list:
        """Variables the loss reaches (an autoencoder never uses the log_var head)."""
        skipped = [] if self.variational else self.encoder.get_layer("log_var").trainable_variables
        variables = self.encoder.trainable_variables + self.decoder.trainable_variables
        return [v for v in variables if not any(v is s for s in skipped)]

    def update_trackers(self, terms: dict, images) -> dict:
        # Each batch mean counts with its number of images, so that the figures are means per image;
        # a replica left without images has NaN means, which must not count.
        count = ops.cast(ops.shape(images)[0], "float32")
        trackers = [tracker for tracker in self.metrics if tracker.name in terms]
        for tracker in trackers:
            tracker.update_state(ops.where(count > 0, terms[tracker.name], 0.0), sample_weight=count)
        results = {m.name: m.result() for m in trackers}
        if spans_several_workers():
            # Keras averages the logs over the workers with strategy.reduce(MEAN, axis=0): give them that axis.
            results = {name: ops.reshape(value, (1,)) for name, value in results.items()}
        return results

    def train_step(self, images):
        # Keras sums gradients over replicas: divided by their count, they are the global batch mean's.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            terms = self.loss_terms(images, sample=True, training=True)
            loss = self.optimizer.scale_loss(terms["loss"] / replicas)  # mixed_float16's loss scale (or 1)
        variables = self.trained_variables()
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        return self.update_trackers(terms, images)

    def test_step(self, images):
        # Validation decodes the posterior mean: deterministic, and what reconstruction grids show.
        return self.update_trackers(self.loss_terms(images, sample=False, training=False), images)


def recompute_batch_norm(model: VAE, batches: Sequence, seed: int) -> None:
    """Set each BatchNorm layer's moving statistics to their plain mean over `batches`, fed as
    training feeds them, so that they match the weights the model holds now (the EMA ones)."""
    parts = model.encoder.layers + model.decoder.layers
    norms = [layer for layer in parts if isinstance(layer, layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    noise = np.random.default_rng(seed)
    try:
        for number, images in enumerate(batches):
            for layer in norms:  # moving * m + batch * (1 - m) with m = n / (n + 1): a running mean
                layer.momentum = number / (number + 1)
            mu, log_var = (np.asarray(part) for part in model.encoder(images, training=True))
            z = mu + np.exp(0.5 * log_var) * noise.standard_normal(mu.shape) if model.variational else mu
            model.decoder(z.astype(np.float32), training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


def spans_several_workers() -> bool:
    """True under a tf.distribute strategy with several workers (more replicas than local devices)."""
    strategy = tf.distribute.get_strategy()  # the default one has no worker_devices
    return tf.distribute.has_strategy() and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)


# --------------------------------------------------------------------------- adversarial term
def hinge_discriminator_loss(logits_real, logits_fake):
    """The discriminator's hinge loss: real patches pushed above 1, reconstructed ones below -1."""
    real = ops.mean(ops.relu(1.0 - ops.cast(logits_real, "float32")))
    fake = ops.mean(ops.relu(1.0 + ops.cast(logits_fake, "float32")))
    return 0.5 * (real + fake)


def lecam_penalty(logits_real, logits_fake, mean_real, mean_fake):
    """LeCam regularisation (Tseng et al. 2021): the squared excess of real logits over the fake ones' moving
    mean, and of the real ones' over fake logits, so that a discriminator cannot win outright."""
    real = ops.mean(ops.square(ops.relu(ops.cast(logits_real, "float32") - mean_fake)))
    fake = ops.mean(ops.square(ops.relu(mean_real - ops.cast(logits_fake, "float32"))))
    return real + fake


class MovingMeans(layers.Layer):
    """Moving means of a few figures, saved in checkpoints like BatchNorm's statistics."""

    def __init__(self, size: int, decay: float, **kwargs):
        super().__init__(**kwargs)
        self.decay = decay
        self.means = self.add_weight((size,), "zeros", trainable=False, name="means", aggregation="mean")

    def update(self, values) -> None:
        self.means.assign(self.decay * self.means + (1.0 - self.decay) * values)


def adaptive_weight(reconstruction_gradient, gan_gradient, weight: float):
    """weight * |grad reconstruction| / (|grad GAN| + 1e-4), clipped to [0, 1e4], at the decoder's last
    layer (Esser et al. 2021). 0 when a gradient is NaN (float16 overflowed): the loss-scale
    optimizer then skips the step and lowers its scale."""
    norms = [ops.sqrt(ops.sum(ops.square(ops.cast(g, "float32")))) for g in (reconstruction_gradient, gan_gradient)]
    ratio = ops.nan_to_num(norms[0] / (norms[1] + 1e-4), nan=0.0)
    return weight * ops.stop_gradient(ops.clip(ratio, 0.0, 1e4))


def build_discriminator(config: ModelConfig, blocks: int = 3) -> keras.Model:
    """Patch discriminator (taming-transformers' NLayerDiscriminator): image -> one logit per patch.
    GroupNormalization normalises each image alone, whatever batch or replica it is in."""
    images = keras.Input((config.image_size, config.image_size, config.channels), name="image")
    filters = config.discriminator_filters
    # No bias: grappler's Conv2D+BiasAdd+LeakyRelu fusion fails (and logs an error) on the GAN's gradients.
    x = layers.Conv2D(filters, 4, strides=2, padding="same", use_bias=False, name="conv0")(images)
    x = layers.LeakyReLU(0.2, name="relu0")(x)
    for index in range(1, blocks + 1):
        width, strides = filters * min(2**index, 8), 2 if index < blocks else 1  # the last one keeps the size
        x = layers.Conv2D(width, 4, strides, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = layers.GroupNormalization(groups=1, name=f"norm{index}")(x)
        x = layers.LeakyReLU(0.2, name=f"relu{index}")(x)
    logits = layers.Conv2D(1, 4, padding="same", name="logits", dtype="float32")(x)
    return keras.Model(images, logits, name="discriminator")


class AdversarialVAE(VAE):
    """From optimizer step `config.adversarial_start` on, the loss adds w * g_loss, with g_loss =
    -mean(D(reconstructions)) and w = `adaptive_weight`, and only the decoder trains (the latent space
    and what was fitted in it stay valid); each such step also trains the patch discriminator D on
    `d_loss` plus `lecam_penalty`. Before it the step runs without D, and D's figures read 0."""

    def __init__(self, encoder: keras.Model, decoder: keras.Model, config: ModelConfig, **kwargs):
        super().__init__(encoder, decoder, config, **kwargs)
        self.discriminator = build_discriminator(config)
        # The GAN practice's fixed rate and betas (DCGAN's beta_1 0.5, taming-transformers' beta_2 0.9).
        optimizer = keras.optimizers.Adam(DISCRIMINATOR_LEARNING_RATE, beta_1=0.5, beta_2=0.9)
        if keras.config.dtype_policy().name == "mixed_float16":  # as compile() wraps the model's
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        self.discriminator_optimizer = optimizer
        self.logit_means = MovingMeans(2, LECAM_DECAY, name="logit_means")  # real, reconstructed
        self.trackers = [*self.trackers, *(keras.metrics.Mean(name=name) for name in ADVERSARIAL_FIGURES)]
        self.gan_traced = False  # whether the current train function includes the discriminator

    def build(self, input_shape):
        # Now, so that a checkpoint's discriminator moments have variables to load into.
        self.discriminator_optimizer.build(self.discriminator.trainable_variables)
        super().build(input_shape)

    def optimizer_variables(self) -> list:
        return [*super().optimizer_variables(), *self.discriminator_optimizer.variables]

    def make_train_function(self, force: bool = False):
        # Until adversarial_start the step runs without the discriminator (as costly as the rest for
        # a term weighted 0); the first step from then on traces it with it.
        started = self.adversarial_started()
        if force or self.train_function is None or started != self.gan_traced:
            self.gan_traced = started
            super().make_train_function(force=True)
            if not started:
                step_without_gan = self.train_function
                self.train_function = lambda iterator: (
                    self.make_train_function() if self.adversarial_started() else step_without_gan
                )(iterator)
        return self.train_function

    def adversarial_started(self) -> bool:
        # A negative start counts back from a run's end, which only train.py knows (and resolves):
        # unresolved, the model trains as a plain VAE rather than freeze its encoder from step 0.
        start = self.config.adversarial_start
        return start >= 0 and int(self.optimizer.iterations.numpy()) >= start

    def train_step(self, images):
        if not self.gan_traced:
            zeros = dict.fromkeys(ADVERSARIAL_FIGURES, ops.convert_to_tensor(0.0))
            return {**super().train_step(images), **self.update_trackers(zeros, images)}
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape(persistent=True) as tape:
            terms = self.loss_terms(images, sample=True, training=True)
            g_loss = -ops.mean(ops.cast(self.discriminator(terms["reconstructions"], training=True), "float32"))
            # Scaled inside the tape (mixed_float16's loss scale), so that their gradients exist.
            losses = [self.optimizer.scale_loss(loss / replicas) for loss in (terms["loss"], g_loss)]
        variables = self.decoder.trainable_variables
        gradients, gan_gradients = (tape.gradient(loss, variables) for loss in losses)
        weight = self.gan_weight(gradients, gan_gradients, variables)
        # The gradients of loss + w * g_loss (w is a constant of the step).
        self.optimizer.apply([g + weight * h for g, h in zip(gradients, gan_gradients, strict=True)], variables)
        terms |= {"loss": terms["loss"] + weight * g_loss, "g_loss": g_loss, "adversarial_weight": weight}
        terms["d_loss"] = self.discriminator_step(images, terms["reconstructions"], replicas)
        return self.update_trackers(terms, images)

    def gan_weight(self, gradients: list, gan_gradients: list, variables: list):
        """`adaptive_weight` from the global batch's unscaled gradients at the decoder's last layer
        (where the KL term has none, so the loss's gradient is the reconstruction's)."""
        last = next(index for index, v in enumerate(variables) if v is self.decoder.layers[-1].kernel)
        pair = [gradients[last], gan_gradients[last]]
        replica = tf.distribute.get_replica_context()  # None in a cross-replica context
        if replica is not None and replica.num_replicas_in_sync > 1:
            pair = replica.all_reduce(tf.distribute.ReduceOp.SUM, pair)
        scale = self.optimizer.scale_loss(1.0)
        return adaptive_weight(pair[0] / scale, pair[1] / scale, self.config.adversarial)

    def discriminator_step(self, images, reconstructions, replicas: int):
        """One step of the discriminator on the hinge loss and the LeCam term; returns the hinge loss."""
        variables = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            logits_real = self.discriminator(images, training=True)
            logits_fake = self.discriminator(ops.stop_gradient(reconstructions), training=True)
            d_loss = hinge_discriminator_loss(logits_real, logits_fake)
            penalty = lecam_penalty(logits_real, logits_fake, self.logit_means.means[0], self.logit_means.means[1])
            scaled_loss = self.discriminator_optimizer.scale_loss((d_loss + LECAM_WEIGHT * penalty) / replicas)
        self.discriminator_optimizer.apply(tape.gradient(scaled_loss, variables), variables)
        logits = [ops.mean(ops.cast(logits, "float32")) for logits in (logits_real, logits_fake)]
        self.logit_means.update(ops.stack(logits))
        return d_loss


def build_vae(config: ModelConfig) -> VAE:
    """The VAE (or autoencoder) `config` describes, with a discriminator when `config.adversarial` > 0."""
    model = (AdversarialVAE if config.adversarial else VAE)(build_encoder(config), build_decoder(config), config)
    model.build((None, config.image_size, config.image_size, config.channels))
    return model


def model_from_config(config: dict) -> VAE:
    """The VAE (or autoencoder) a run's config.json describes, freshly initialised."""
    return build_vae(model_config(config))


# --------------------------------------------------------------------------- precision
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo's names of bfloat16 matrix instructions
TENSOR_CORES = (7, 0)  # the CUDA compute capability from which NVIDIA GPUs have tensor cores


def choose_precision(setting: str, cpu_flags: str, gpu_capability: tuple[int, int] | None) -> tuple[str, str]:
    """(Keras dtype policy, why) for --mixed-precision `setting` on a machine with these /proc/cpuinfo
    `cpu_flags` and lowest GPU compute capability (None: no GPU)."""
    if setting == "off":
        return "float32", "--mixed-precision off"
    if setting == "on" and gpu_capability is not None:
        return "mixed_float16", "--mixed-precision on, on a GPU"
    if setting == "on":
        return "mixed_bfloat16", "--mixed-precision on, on a CPU"
    if setting != "auto":
        raise ValueError(f"unknown --mixed-precision {setting!r}; choose one of {', '.join(PRECISION_SETTINGS)}")
    if gpu_capability is not None:
        version = ".".join(map(str, gpu_capability))
        if tuple(gpu_capability) >= TENSOR_CORES:
            return "mixed_float16", f"GPU has tensor cores (compute capability {version})"
        return "float32", f"GPU has no tensor cores (compute capability {version}, below 7.0)"
    found = [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags.split()]
    if found:
        return "mixed_bfloat16", f"CPU has {found[0]}"
    return "float32", f"CPU has neither {' nor '.join(BF16_CPU_FLAGS)}"


def cpu_flags() -> str:
    """This machine's CPU flags as /proc/cpuinfo lists them ('' without /proc/cpuinfo)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        return next((line.partition(":")[2] for line in cpuinfo if line.startswith("flags")), "")
    return ""


def gpu_capability() -> tuple[int, int] | None:
    """The lowest CUDA compute capability of the GPUs ((0, 0) when one does not say), or None."""
    details = [tf.config.experimental.get_device_details(gpu) for gpu in tf.config.list_physical_devices("GPU")]
    return min((tuple(gpu.get("compute_capability") or (0, 0)) for gpu in details), default=None)


def run_precision(config: dict) -> tuple[str, str]:
    """(policy, why) for a run: chosen for this machine, or the one a resumed run began with."""
    setting = config["mixed_precision"]
    if setting in PRECISION_POLICIES:
        return setting, config["mixed_precision_reason"]
    return choose_precision(setting, cpu_flags(), gpu_capability())


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build Keras layers under a dtype policy, restoring the previous one afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_optimizer(config: dict, steps_per_epoch: int = 1) -> keras.optimizers.Optimizer:
    """Adam with the run's learning-rate schedule (warm-up, cosine or constant) and optional EMA."""
    learning_rate = config["learning_rate"]
    cosine = config.get("lr_schedule", "constant") == "cosine"
    warmup_steps = config.get("lr_warmup_steps", 0)
    if cosine or warmup_steps:
        # One schedule for all cases: alpha=1 keeps the rate constant after the warm-up. The
        # decoder's fine-tune against a discriminator that starts later goes on at the last rate.
        steps = config["epochs"] * steps_per_epoch
        if config.get("adversarial") and config.get("adversarial_start", 0) > 0:  # negative: unresolved
            steps = min(steps, config["adversarial_start"])
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else learning_rate,
            decay_steps=max(1, steps - warmup_steps),
            alpha=0.05 if cosine else 1.0,
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    return Adam(learning_rate, use_ema=config["ema"] > 0, ema_momentum=config["ema"] or 0.99)


class Adam(keras.optimizers.Adam):
    """Adam whose EMA weights go back to the variables they average (Keras copies them by position into
    all trainable weights, which for an autoencoder include the untrained log_var head), with the EMA's
    momentum warmed up as tf.train.ExponentialMovingAverage's: min(momentum, (1 + step) / (10 + step))."""

    @property
    def ema_momentum(self):
        # Else the average of a short run is mostly its random start (0.999^400 = 0.67 after 400 steps).
        step = ops.cast(self.iterations, "float32")
        return ops.minimum(self.target_ema_momentum, (1.0 + step) / (10.0 + step))

    @ema_momentum.setter
    def ema_momentum(self, value: float) -> None:
        self.target_ema_momentum = value

    def get_config(self):
        return {**super().get_config(), "ema_momentum": self.target_ema_momentum}

    def finalize_variable_values(self, var_list):
        if self.use_ema and self.built:
            # The list the optimizer was built on, in its order: the averages' own.
            super().finalize_variable_values(self._trainable_variables)


def main(argv: Sequence[str] | None = None) -> None:
    model = build_vae(ModelConfig(**vars(build_parser().parse_args(argv))))
    model.encoder.summary()
    model.decoder.summary()
    print(f"total parameters: {model.encoder.count_params() + model.decoder.count_params():,}")


if __name__ == "__main__":
    main()
