"""train.py's settings, each defined once: flag, config.json key, default, choices and help.

train_cli.py builds the command line (an argparse group per entry of GROUPS) and config.json from
SETTINGS; ModelConfig, what vae.py builds a model from, has the model's settings as fields. No
TensorFlow here, so that `python train.py --help` answers at once.
"""

from __future__ import annotations

from argparse import BooleanOptionalAction
from dataclasses import dataclass, field, make_dataclass

from errors import not_a_script
from images import DEFAULT_CROP
from runs import TENSORBOARD_DIR

RECONSTRUCTION_LOSSES = ("mse", "bce", "gaussian")
UPSAMPLING_MODES = ("nearest", "transpose")
PRECISION_SETTINGS = ("auto", "on", "off")  # --mixed-precision; config.json records the policy chosen
PRECISION_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
DEFAULT_FILTERS = (32, 64, 128, 256)


@dataclass(frozen=True)
class Setting:
    """One flag of train.py. Its argparse dest, `name`, is also its config.json key (unless
    `in_config` is False); `action`, `nargs` and `const` go to argparse as they are."""

    flag: str
    help: str
    default: object = None  # a list is given on the command line comma separated
    type: type | None = None
    choices: tuple | None = None
    metavar: str | None = None  # argparse's default: the dest in capitals
    dest: str | None = None  # where it differs from the flag: --latent -> latent_dim
    in_config: bool = True
    required: bool = False  # config.json must hold it for train.py to rebuild and continue a run
    on_resume: bool = False  # may be given with --resume (the others come from config.json)
    action: str | type | None = None
    nargs: str | None = None
    const: object = None

    @property
    def name(self) -> str:
        return self.dest or self.flag.removeprefix("--").replace("-", "_")


GROUPS: dict[str, tuple[Setting, ...]] = {
    "data and run folder": (
        Setting("--data", "CelebA root folder (Kaggle or original layout) or a plain folder of faces", required=True, on_resume=True),
        Setting("--out", "run folder, new or empty (default: runs/<timestamp>)", in_config=False),
        Setting("--resume", "continue the run in this folder from its last saved state and config.json; only --epochs (to "
                "extend), --data (if moved), --cache, --strategy, --verbose, --backup-every, --worker-start-timeout, "
                "--no-tensorboard may be given, and --adversarial (with --adversarial-start, --discriminator-filters) "
                "to add a discriminator phase", metavar="RUN", in_config=False, on_resume=True),
        Setting("--limit", "train on the first N training images only (0: all)", 0, int, required=True),
        Setting("--train-split", "partitions trained on; with train+validation the validation figures are on seen images "
                "and only the test partition stays unseen", "train", choices=("train", "train+validation")),
        Setting("--cache", "decoded-image cache: memory, none, or a folder for a file cache, for data that does not fit in "
                "memory (train.py checks that the cache fits)", "memory", required=True, on_resume=True),
        Setting("--crop", "side of the central square kept, in pixels of the 178-wide aligned CelebA frame (0: whole square)",
                DEFAULT_CROP, int, required=True),
        Setting("--flip", "mirror each training image left to right with probability 1/2 (a face's mirror image is a "
                "face: twice the images to learn from)", True, action=BooleanOptionalAction),
    ),
    "model": (
        Setting("--model", "VAE or plain autoencoder", "vae", choices=("vae", "ae"), required=True),
        Setting("--latent", "latent dimension", 128, int, metavar="LATENT", dest="latent_dim", required=True),
        Setting("--image-size", "square image side (a multiple of 2^len(filters))", 64, int, required=True),
        Setting("--channels", "3 for RGB, 1 for grayscale", 3, int, choices=(1, 3), required=True),
        Setting("--grayscale", "same as --channels 1", dest="channels", in_config=False, action="store_const", const=1),
        Setting("--filters", "encoder filters per block, comma separated", list(DEFAULT_FILTERS), required=True),
        Setting("--decoder-filters", "decoder filters per block in the order of --filters, e.g. 64,128,256,512 for a "
                "decoder wider than the encoder (default: those of --filters)", metavar="FILTERS"),
        Setting("--output-filters", "width of a convolution block at the full image size before the decoder's output "
                "layer, so that it shapes detail finer than the last upsampling (0: none)", 16, int, metavar="WIDTH"),
        Setting("--hidden", "units of the encoder's dense layer", 512, int, metavar="HIDDEN", dest="hidden_units", required=True),
        Setting("--upsampling", "decoder blocks: UpSampling2D+Conv2D (nearest) or Conv2DTranspose (transpose)", "nearest",
                choices=UPSAMPLING_MODES, required=True),
    ),
    "loss": (
        Setting("--recon", "reconstruction loss, summed over pixels (gaussian: calibrated decoder variance)", "mse",
                choices=RECONSTRUCTION_LOSSES, dest="reconstruction", required=True),
        Setting("--beta", "weight of the KL term (beta-VAE when > 1)", 0.1, float, required=True),
        Setting("--beta-warmup", "linear KL warm-up from 0 to beta over this many optimizer steps (0: none)", 0, int,
                metavar="STEPS", dest="beta_warmup_steps", required=True),
        Setting("--beta-cycle", "cyclical KL annealing period in optimizer steps (0: none)", 0, int, metavar="STEPS",
                dest="beta_cycle_steps", required=True),
        Setting("--adversarial", "weight of a patch discriminator's hinge-loss term on the reconstructions, scaled "
                "adaptively at the decoder's last layer (0: no discriminator)", 0.5, float, metavar="WEIGHT"),
        Setting("--adversarial-start", "optimizer step from which the discriminator's term counts and only the decoder "
                "trains; negative: that many steps before the end, at most back to the middle", -2217, int, metavar="STEP"),
        Setting("--discriminator-filters", "width of the discriminator's first block, doubled in each of the next three "
                "up to 8x (its cost per step grows with the square)", 32, int, metavar="WIDTH"),
    ),
    "optimisation": (
        Setting("--epochs", "number of epochs (default: %(default)s; on --resume: the run's own)", 88, int,
                required=True, on_resume=True),
        Setting("--batch-size", "global batch size", 64, int, required=True),
        Setting("--lr", "Adam learning rate", 2e-3, float, metavar="LR", dest="learning_rate", required=True),
        Setting("--lr-schedule", "cosine: decay from --lr to 5%% of it over all epochs, or up to --adversarial-start "
                "(stretched when --resume extends them)", "cosine", choices=("constant", "cosine")),
        Setting("--lr-warmup", "raise the learning rate linearly from 0 to --lr over this many optimizer steps, then "
                "follow --lr-schedule over the rest (0: none)", 100, int, metavar="STEPS", dest="lr_warmup_steps"),
        Setting("--ema", "EMA momentum of the weights (0: off); saved models, grids and validation use the EMA weights, "
                "with BatchNorm statistics recomputed for them", 0.999, float, required=True),
        Setting("--mixed-precision", "auto: mixed_bfloat16 on a CPU with amx_bf16 or avx512_bf16, mixed_float16 on a GPU "
                "of compute capability 7.0+, else float32; on (or the flag alone): mixed_float16 on GPU, mixed_bfloat16 "
                "on CPU; off: float32", "auto", choices=PRECISION_SETTINGS, required=True, nargs="?", const="on"),
        Setting("--strategy", "tf.distribute strategy: auto is MirroredStrategy with more than one GPU; multiworker reads "
                "TF_CONFIG (docs/training.md)", "auto", choices=("auto", "mirrored", "multiworker", "none"), required=True,
                on_resume=True),
        Setting("--seed", "random seed (weights, sampling, data order)", 0, int, required=True),
        Setting("--verbose", "Keras progress: 0 silent, 1 bar (one line per epoch when stdout is not a terminal), 2 one "
                "line per epoch", 1, int, choices=(0, 1, 2), in_config=False, on_resume=True),
    ),
    "recovery and logging (also on --resume)": (
        Setting("--backup-every", "back up the training state every STEPS optimizer steps, so a killed run loses at most "
                "that many; 0: only the end-of-epoch checkpoints", 200, int, metavar="STEPS", in_config=False, on_resume=True),
        Setting("--worker-start-timeout", "with --strategy multiworker: how long each worker waits for the others to start "
                "(then it stops, naming those missing)", 300, float, metavar="SECONDS", in_config=False, on_resume=True),
        Setting("--no-tensorboard", f"do not write TensorBoard logs (default: they go to RUN/{TENSORBOARD_DIR}/)", True,
                dest="tensorboard", in_config=False, on_resume=True, action="store_false"),
    ),
}  # fmt: skip
SETTINGS = tuple(setting for group in GROUPS.values() for setting in group)
DEFAULTS = {setting.name: setting.default for setting in SETTINGS if setting.action != "store_const"}  # not --grayscale
DEFAULT_RECIPE = {setting.name: setting.default for setting in SETTINGS if setting.in_config}
DISCRIMINATOR_SETTINGS = ("adversarial", "adversarial_start", "discriminator_filters")  # --resume may add them


# What vae.py builds a model from: the settings of the "model" and "loss" groups, and the seed.
MODEL_SETTINGS = tuple(
    s for s in SETTINGS if s.in_config and (s in GROUPS["model"] + GROUPS["loss"] or s.name == "seed")
)
ModelConfig = make_dataclass(
    "ModelConfig",
    [(s.name, s.type or object, field(default=tuple(s.default) if isinstance(s.default, list) else s.default))
     for s in MODEL_SETTINGS],
    frozen=True,
)  # fmt: skip


def model_config(config: dict) -> ModelConfig:
    """The model settings of a run's config (those it lacks keep their defaults)."""
    return ModelConfig(**{s.name: config[s.name] for s in MODEL_SETTINGS if s.name in config})


def training_splits(config: dict) -> list[str]:
    """The partitions a run trains on and its latent density is fitted to (train without config.json)."""
    return config.get("train_split", "train").split("+")


if __name__ == "__main__":
    not_a_script(__file__)
