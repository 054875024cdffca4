"""Export a trained run's encoder and decoder to ONNX, for apps that run them without TensorFlow.

    python export_onnx.py --run runs/<name>                 # writes runs/<name>/decoder.onnx, encoder.onnx
    python export_onnx.py --run runs/<name> --out exported  # elsewhere; the run's JSON files are copied along
    python export_onnx.py --help                            # every flag, with its default

decoder.onnx maps "z" [batch, latent_dim] to "image" [batch, H, W, C] (NHWC, values in [0, 1]),
encoder.onnx "image" to "mu" and "log_var". The decoder is traced with graph rewrites for CPU speed
(--plain: without); each part is checked against Keras before the files are written together, all or none.
inference.py runs them; docs/onnx.md describes the files, their metadata, the checks and the rewrites.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from errors import UserError, first_line, run_main
from images import write_together
from inference import ONNX_FORMAT, PARTS, make_session
from latent import attribute_directions_problem, find_density
from runs import (
    ATTRIBUTES_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DENSITY_FILE,
    HelpFormatter,
    check_writable,
    keras_file,
    load_model,
    model_folder_part,
    onnx_file,
    read_config,
)

if TYPE_CHECKING:
    import keras
    import onnx

DEFAULT_OPSET = 17  # supported by onnxruntime since 1.13 and by most other runtimes
TOLERANCE = 1e-4
PARITY_BATCHES = (1, 7, 64)
SUBPIXEL_MAX_FILTERS = 16  # below one block of onnxruntime's blocked convolution (16 floats with AVX-512)

# Nearest 2x upsampling then a 3x3 convolution, for output rows 2i + a: the taps on the small
# grid (rows i-1, i, i+1) as sums of the original taps. PHASE_TAPS[a, new tap, original tap]:
# a = 0: w0 * x[i-1] + (w1 + w2) * x[i]; a = 1: (w0 + w1) * x[i] + w2 * x[i+1].
PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]], [[0, 0, 0], [1, 1, 0], [0, 0, 1]]], dtype=np.float64)


class ExportError(UserError):
    """A run that cannot be exported, or an export that failed its checks."""


# --------------------------------------------------------------------------- run folder
def read_run(run_dir: Path) -> dict:
    """The run's config.json, after checking that the folder holds trained models."""
    hint = f"train first: python train.py --data ./celeba --out {run_dir}"
    if not run_dir.is_dir():
        raise ExportError(f"run folder {run_dir} does not exist; {hint}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ExportError(f"{run_dir} has no config.json; give a run folder written by train.py, or {hint}")
    config = read_config(run_dir)  # its own errors say how to mend config.json
    missing = [keras_file(part) for part in ("encoder", "decoder") if not (run_dir / keras_file(part)).is_file()]
    if missing:
        raise ExportError(
            f"{run_dir} has no {' or '.join(missing)} (they are written after each epoch); "
            f"{hint}, or let its first epoch finish"
        )
    return config


def load_models(run_dir: Path, config: dict) -> tuple[keras.Model, keras.Model]:
    """encoder.keras and decoder.keras, checked against config.json (the errors say what to do)."""
    return tuple(load_model(run_dir, part, config) for part in ("encoder", "decoder"))


def onnx_metadata(config: dict, part: str, run_dir: Path) -> dict[str, str]:
    """metadata_props for one part: enough for an app with no other context."""
    size, channels, latent = config["image_size"], config["channels"], config["latent_dim"]
    colour = "RGB" if channels == 3 else "grayscale"
    image = f"float32 [batch, {size}, {size}, {channels}], NHWC, {colour}, values in [0, 1]"
    if part == "decoder":
        takes = f"z: float32 [batch, {latent}]; samples of {DENSITY_FILE} (or standard normal ones) give new faces"
        gives = f"image: {image}; multiply by 255 for 8-bit pixels"
    else:
        takes = (
            f"image: {image}; the face cropped to its central {config.get('crop', 148)} px of a 178 px wide "
            f"aligned CelebA frame and resized to {size}x{size}"
        )
        gives = f"mu, log_var: float32 [batch, {latent}], the posterior q(z|x) = N(mu, exp(log_var))"
    return {
        "format": ONNX_FORMAT,
        "part": part,
        "latent_dim": str(latent),
        "image_size": str(size),
        "channels": str(channels),
        "crop": str(config.get("crop", 148)),
        "model": str(config.get("model", "vae")),
        "reconstruction": str(config.get("reconstruction", "mse")),
        "value_range": "0,1",
        "layout": "NHWC",
        "input": takes,
        "output": gives,
        "source_run": run_dir.name,
    }


def check_attributes(run_dir: Path, latent_dim: int) -> Path | None:
    """attribute_directions.json of the run, checked, or None when generate.py has not written one."""
    path = run_dir / ATTRIBUTES_FILE
    if not path.is_file():
        return None
    try:
        problem = attribute_directions_problem(json.loads(path.read_text()), latent_dim)
    except ValueError as error:
        raise ExportError(
            f"{path} is not valid JSON ({error}); recompute it with generate.py --mode attribute"
        ) from None
    if problem:
        raise ExportError(f"{path} {problem}; recompute it with generate.py --mode attribute --recompute")
    return path


# --------------------------------------------------------------------------- tracing with the rewrites
def kernel_and_bias(layer) -> tuple[np.ndarray, np.ndarray]:
    """A Dense or Conv2D layer's weights as float32 arrays (a zero bias where it has none)."""
    bias = layer.bias if layer.use_bias else np.zeros(layer.kernel.shape[-1])
    return np.asarray(layer.kernel, np.float32), np.asarray(bias, np.float32)


def nchw_order(height: int, width: int, channels: int) -> np.ndarray:
    """perm such that vector_in_chw_order = vector_in_hwc_order[perm]."""
    return np.arange(height * width * channels).reshape(height, width, channels).transpose(2, 0, 1).ravel()


def resize_step(size: Sequence[int]) -> Callable:
    """Nearest upsampling by integer factors as ResizeNearestNeighbor (asymmetric, floor)."""
    import tensorflow as tf

    return lambda x: tf.raw_ops.ResizeNearestNeighbor(
        images=x, size=[x.shape[1] * size[0], x.shape[2] * size[1]], align_corners=False, half_pixel_centers=False
    )


def subpixel_eligible(layer) -> bool:
    """A 3x3, stride-1, 'same' Conv2D with few filters that can absorb a 2x nearest upsampling."""
    import keras

    return (
        type(layer) is keras.layers.Conv2D
        and (tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate)) == ((3, 3), (1, 1), (1, 1))
        and (layer.padding, layer.data_format, layer.groups) == ("same", "channels_last", 1)
        and layer.filters < SUBPIXEL_MAX_FILTERS
    )


def subpixel_step(conv) -> Callable:
    """2x nearest upsampling then `conv`, as one 3x3 convolution with 4x the filters on the small
    grid and depth_to_space: the same function with no convolution at full resolution."""
    import tensorflow as tf

    kernel, bias = kernel_and_bias(conv)  # kernel [3, 3, in, out]
    # New kernel [3, 3, in, (a, b, out)]: depth_to_space puts channel (a*2 + b)*out + c at (2i+a, 2j+b).
    phased = np.einsum("atr,bus,rsio->tuiabo", PHASE_TAPS, PHASE_TAPS, kernel.astype(np.float64))
    phased = phased.reshape(3, 3, kernel.shape[2], 4 * conv.filters).astype(np.float32)
    phased_bias = np.tile(bias, 4)
    return lambda x: tf.nn.depth_to_space(conv.activation(tf.nn.conv2d(x, phased, 1, "SAME") + phased_bias), 2)


def dense_steps(dense, perm: np.ndarray) -> Callable:
    """`dense` with its outputs (its kernel's columns and its bias) permuted by perm."""
    import tensorflow as tf

    kernel, bias = kernel_and_bias(dense)
    kernel, bias = kernel[:, perm], bias[perm]
    return lambda x: dense.activation(tf.matmul(x, kernel) + bias)


def plan_rewrites(layers: list[keras.layers.Layer]) -> tuple[dict[str, Callable], list[str]]:
    """Replacement computations for some layers (by name) and a note on each (docs/onnx.md): 2x upsampling +
    convolution as a sub-pixel convolution, other nearest upsamplings as Resize, a Dense before a Reshape to an
    image with its outputs in CHW order."""
    import keras
    import tensorflow as tf
    from keras.layers import Dense, Reshape, UpSampling2D

    def only_consumer(layer):
        users = [user for user in layers if any(t is layer.output for t in keras.tree.flatten(user.input))]
        return users[0] if len(users) == 1 else None

    steps: dict[str, Callable] = {}
    notes: list[str] = []
    for layer in layers:
        if layer.name in steps:
            continue
        following = only_consumer(layer)
        if isinstance(layer, UpSampling2D) and (layer.interpolation, layer.data_format) == ("nearest", "channels_last"):
            if tuple(layer.size) == (2, 2) and subpixel_eligible(following):
                steps[layer.name] = lambda x: x
                steps[following.name] = subpixel_step(following)
                notes.append(f"{layer.name}+{following.name}: sub-pixel convolution + depth_to_space")
            else:
                steps[layer.name] = resize_step(layer.size)
                notes.append(f"{layer.name}: Resize (nearest, asymmetric)")
        elif isinstance(layer, Dense) and isinstance(following, Reshape) and len(following.target_shape) == 3:
            height, width, channels = following.target_shape
            steps[layer.name] = dense_steps(layer, nchw_order(height, width, channels))
            steps[following.name] = lambda y, shape=(-1, channels, height, width): tf.transpose(
                tf.reshape(y, shape), [0, 2, 3, 1]
            )
            notes.append(f"{layer.name}+{following.name}: weights in CHW order")
    return steps, notes


def forward_function(model: keras.Model, rewrite: bool) -> tuple[Callable, list[str]]:
    """model's inference pass on TensorFlow tensors, layer by layer (one input each), with or without the rewrites."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    steps, notes = plan_rewrites(layers) if rewrite else ({}, [])

    def forward(x):
        values = {id(model.inputs[0]): x}
        for layer in layers:
            step = steps.get(layer.name) or (lambda t, layer=layer: layer(t, training=False))
            values[id(layer.output)] = step(values[id(layer.input)])
        return [values[id(t)] for t in model.outputs]

    return forward, notes


def convert(model: keras.Model, part: str, rewrite: bool, opset: int) -> tuple[onnx.ModelProto, list[str]]:
    """tf2onnx conversion of one part, with the contract's names and a dynamic 'batch' dimension."""
    import tensorflow as tf
    import tf2onnx

    input_name, output_names = PARTS[part]
    if len(model.inputs) != 1 or len(model.outputs) != len(output_names):
        raise ExportError(
            f"the {part} has {len(model.inputs)} inputs and {len(model.outputs)} outputs, expected 1 and {len(output_names)}"
        )
    forward, notes = forward_function(model, rewrite)
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name=input_name)

    @tf.function(input_signature=[spec], autograph=False)
    def function(x):
        return dict(zip(output_names, forward(x), strict=True))

    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
    except ValueError as error:  # e.g. an --opset tf2onnx does not support
        raise ExportError(first_line(error)) from None
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.graph.output.sort(key=lambda value: output_names.index(value.name))  # tf2onnx sorts them by name
    return proto, notes


def add_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Set metadata_props (replacing keys already there) and a doc string from them."""
    import onnx

    kept = {entry.key: entry.value for entry in proto.metadata_props} | metadata
    onnx.helper.set_model_props(proto, kept)
    proto.doc_string = f"{kept['part']} of a CelebA VAE. input {kept['input']}. output {kept['output']}."


# --------------------------------------------------------------------------- checks and writing
def keras_outputs(model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    outputs = model(x, training=False)
    return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def parity_check(
    model: keras.Model, proto: onnx.ModelProto, part: str, tolerance: float, threads: int
) -> dict[int, float]:
    """Max |ONNX - Keras| per batch size of PARITY_BATCHES; raises ExportError above tolerance or on other shapes."""
    try:
        session = make_session(proto.SerializeToString(), threads=threads)
    except ValueError as error:  # e.g. an --opset without an op the graph needs
        raise ExportError(str(error)) from None
    input_name, output_names = PARTS[part]
    differences = {}
    for batch in PARITY_BATCHES:
        rng, shape = np.random.default_rng(batch), (batch, *model.inputs[0].shape[1:])
        # Standard normal latents for the decoder, uniform [0, 1] images for the encoder.
        x = (rng.standard_normal(shape) if len(shape) == 2 else rng.random(shape)).astype(np.float32)
        found = session.run(list(output_names), {input_name: x})
        for name, want, got in zip(output_names, keras_outputs(model, x), found, strict=True):
            if want.shape != got.shape:
                raise ExportError(f"{part} output {name} at batch {batch}: ONNX shape {got.shape}, Keras {want.shape}")
            # np.maximum, unlike max(), keeps a NaN of any output
            differences[batch] = float(np.maximum(differences.get(batch, 0.0), np.max(np.abs(want - got))))
        if not differences[batch] <= tolerance:  # also catches NaN
            raise ExportError(
                f"{part}: ONNX and Keras differ by up to {differences[batch]:.3g} at batch {batch}, above the "
                f"tolerance {tolerance:g}; nothing was written (try --plain to export without the graph rewrites)"
            )
    return differences


def op_counts(source: onnx.ModelProto | str | os.PathLike) -> Counter:
    """Node types of a model (a proto or file)."""
    import onnx

    proto = source if hasattr(source, "graph") else onnx.load(str(source))
    return Counter(node.op_type for node in proto.graph.node)


def convert_checked(
    model: keras.Model,
    part: str,
    metadata: dict[str, str],
    rewrite: bool = True,
    tolerance: float = TOLERANCE,
    opset: int = DEFAULT_OPSET,
    threads: int = 0,
) -> onnx.ModelProto:
    """Convert one part, check its parity with Keras and add its metadata; prints parity and Transpose counts."""
    proto, notes = convert(model, part, rewrite=rewrite, opset=opset)
    differences = parity_check(model, proto, part, tolerance=tolerance, threads=threads)
    add_metadata(proto, {**metadata, "parity_max_abs_diff": f"{max(differences.values()):.3g}", "opset": str(opset)})
    figures = ", ".join(f"{difference:.2g} (batch {batch})" for batch, difference in differences.items())
    print(f"{part}: max |ONNX - Keras| {figures}; tolerance {tolerance:g}")
    with tempfile.TemporaryDirectory() as folder:  # the graph onnxruntime runs after its optimisations
        make_session(proto.SerializeToString(), optimized_path=Path(folder) / "optimized.onnx")
        before, after = op_counts(proto)["Transpose"], op_counts(Path(folder) / "optimized.onnx")["Transpose"]
    print(f"  Transpose nodes: {before} in the file, {after} after onnxruntime's optimizer")
    for note in notes:
        print(f"  rewrite {note}")
    return proto


# --------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Export a run's encoder and decoder to ONNX (NHWC, dynamic batch, metadata) and check "
        "them against Keras.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--run", required=True, help="run folder written by train.py (runs/<name>)")
    parser.add_argument("--out", help="folder for decoder.onnx and encoder.onnx (default: the run folder)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest |ONNX - Keras| accepted")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads for the checks (0: its default)"
    )
    parser.add_argument(
        "--plain", action="store_true", help="convert the Keras graphs as they are, without the CPU graph rewrites"
    )
    args = parser.parse_args(argv)
    if not args.tolerance > 0:
        parser.error(f"--tolerance must be positive (got {args.tolerance})")
    if args.threads < 0:
        parser.error(f"--threads must not be negative (got {args.threads})")
    return args


def check_out(out: Path, run_dir: Path) -> Path:
    """--out, refused before any work when it cannot be written, is another run's folder (whose
    config.json the copy would replace) or lies in one of a run's own folders (checkpoint/, ...)."""
    check_writable(out, folder=True)
    if out.resolve() == run_dir.resolve():
        return out
    if any((out / keras_file(part)).is_file() for part in ("encoder", "decoder")) or (out / CHECKPOINT_DIR).is_dir():
        raise ExportError(
            f"--out {out} is the folder of another train.py run, whose {CONFIG_FILE} the export would replace; "
            "give a new folder or an exported one"
        )
    part = model_folder_part(out)
    if part is not None:
        raise ExportError(f"--out {out} lies in {part}, which train.py keeps; give another --out")
    return out


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Export both parts; returns the paths written."""
    args = parse_args(argv)
    run_dir = Path(args.run)
    config = read_run(run_dir)
    out = check_out(Path(args.out) if args.out else run_dir, run_dir)
    # The models first: an edited config.json is the problem to name, not the files that fit the models.
    encoder, decoder = load_models(run_dir, config)
    size, latent_dim = config["image_size"], config["latent_dim"]
    attributes = check_attributes(run_dir, latent_dim)
    density = run_dir / DENSITY_FILE if find_density(run_dir, latent_dim) else None
    print(f"run {run_dir}: {config.get('model', 'vae')}, latent {latent_dim}, {size}x{size}x{config['channels']}")
    beside = {
        "attribute_directions": f"{ATTRIBUTES_FILE} beside this file" if attributes else None,
        "latent_density": f"{DENSITY_FILE} beside this file: sample z from it (latent.py)" if density else None,
    }
    beside = {key: note for key, note in beside.items() if note}
    options = {"rewrite": not args.plain, "tolerance": args.tolerance, "opset": args.opset, "threads": args.threads}
    protos = {
        part: convert_checked(model, part, onnx_metadata(config, part, run_dir) | beside, **options)
        for part, model in (("decoder", decoder), ("encoder", encoder))
    }
    # One export_id (a hash of both models) in both files: runs.OnnxBackend refuses a folder of mixed exports.
    export_id = hashlib.sha256(b"".join(proto.SerializeToString() for proto in protos.values())).hexdigest()[:16]
    for proto in protos.values():
        add_metadata(proto, {"export_id": export_id})
    import onnx

    files = {out / onnx_file(part): functools.partial(onnx.save, proto) for part, proto in protos.items()}
    companions = {CONFIG_FILE: run_dir / CONFIG_FILE, ATTRIBUTES_FILE: attributes, DENSITY_FILE: density}
    if out.resolve() != run_dir.resolve():  # the models and the run's JSON files, all or none
        files |= {
            out / name: functools.partial(shutil.copyfile, source) for name, source in companions.items() if source
        }
    try:
        written = write_together(files)
    except OSError as error:  # a full disk, or a folder that takes no new files
        raise ExportError(
            f"cannot write into {out} ({error.strerror or error}); free some space or give another --out"
        ) from None
    for path in written[len(protos) :]:
        print(f"copied {companions[path.name]} to {path}")
    print("done: " + ", ".join(str(path) for path in written))
    return written


if __name__ == "__main__":
    run_main(main)
