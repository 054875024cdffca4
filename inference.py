"""Run exported models (decoder.onnx, encoder.onnx) with numpy and onnxruntime only.

    import inference
    decoder = inference.make_session("pretrained/celeba64/decoder.onnx")
    inference.check_model(decoder, "decoder")       # its metadata, after checking names and shapes
    faces = inference.decode(decoder, z)            # z [N, latent_dim] -> [N, H, W, C] in [0, 1]

No TensorFlow, Keras or tf2onnx. export_onnx.py writes the files; docs/onnx.md describes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from errors import first_line, not_a_script

if TYPE_CHECKING:
    import onnxruntime

ONNX_FORMAT = "celeba-vae-onnx/1"
# The ONNX interface of each part: input name, output names.
PARTS = {"decoder": ("z", ("image",)), "encoder": ("image", ("mu", "log_var"))}


def make_session(
    source: str | os.PathLike | bytes, threads: int = 0, optimized_path: str | os.PathLike | None = None
) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session (all graph optimisations: its default) of a path or a serialized model; saves the
    optimized graph to optimized_path if given. Raises FileNotFoundError or ValueError (unloadable)."""
    import onnxruntime as ort

    serialized = isinstance(source, bytes)
    if not serialized and not Path(source).is_file():
        raise FileNotFoundError(f"{source} does not exist; export it with: python export_onnx.py --run RUN")
    if threads < 0:
        raise ValueError(f"threads must be 0 (onnxruntime's default) or more, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: no notes about hardware-specific optimized graphs
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(source if serialized else str(source), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable models
        name = "the model" if serialized else str(source)
        raise ValueError(
            f"onnxruntime cannot load {name} ({first_line(error)}); re-export it with export_onnx.py"
        ) from None


def read_onnx_metadata(source: str | os.PathLike | onnxruntime.InferenceSession) -> dict[str, str]:
    """The metadata_props of an exported file (a path or an open session), as a dict of strings."""
    session = make_session(source) if isinstance(source, (str, os.PathLike)) else source
    return dict(session.get_modelmeta().custom_metadata_map)


def check_model(session: onnxruntime.InferenceSession, part: str, name: str = "the model") -> dict[str, str]:
    """The metadata of an exported `part`, after checking its names, ranks and sizes; raises ValueError."""
    input_name, output_names = PARTS[part]
    inputs = {node.name: node.shape for node in session.get_inputs()}
    outputs = {node.name: node.shape for node in session.get_outputs()}
    input_rank = 2 if part == "decoder" else 4
    if list(inputs) != [input_name] or set(outputs) != set(output_names) or len(inputs[input_name]) != input_rank:
        raise ValueError(
            f"{name} is not an exported {part}: it has inputs {inputs} and outputs {outputs}, expected input "
            f"{input_name!r} of rank {input_rank} and outputs {list(output_names)}; re-export it with export_onnx.py"
        )
    metadata = read_onnx_metadata(session)
    if metadata.get("format") != ONNX_FORMAT or metadata.get("part", part) != part:
        raise ValueError(
            f"{name} lacks the {ONNX_FORMAT} {part} metadata (format {metadata.get('format')!r}, "
            f"part {metadata.get('part')!r}); re-export it with export_onnx.py"
        )
    try:
        latent, size, channels = (int(metadata[key]) for key in ("latent_dim", "image_size", "channels"))
    except (KeyError, ValueError):
        raise ValueError(f"{name} has incomplete size metadata; re-export it with export_onnx.py") from None
    expected = [latent] if part == "decoder" else [size, size, channels]
    if list(inputs[input_name][1:]) != expected:
        raise ValueError(
            f"{name} takes {input_name} of shape {inputs[input_name]} but its metadata says [batch, "
            f"{', '.join(map(str, expected))}]; re-export it with export_onnx.py"
        )
    return metadata


def pair_mismatch(decoder_metadata: dict[str, str], encoder_metadata: dict[str, str]) -> str:
    """Why an encoder and a decoder are not the two files of one export ("" when they are)."""
    keys = ("export_id", "source_run", "latent_dim", "image_size", "channels", "crop", "model")
    return ", ".join(
        f"{key} {decoder_metadata.get(key)!r} vs {encoder_metadata.get(key)!r}"
        for key in keys
        if decoder_metadata.get(key) != encoder_metadata.get(key)
    )


def decode(session: onnxruntime.InferenceSession, z: np.ndarray) -> np.ndarray:
    """Latent vectors [N, latent_dim] (or one [latent_dim]) -> images float32 [N, H, W, C] in [0, 1]."""
    z = np.asarray(z, dtype=np.float32)
    z = z[None] if z.ndim == 1 else z
    expected = session.get_inputs()[0].shape[1]
    if z.ndim != 2 or z.shape[1] != expected:
        raise ValueError(
            f"latent vectors of shape {list(z.shape)} do not fit this decoder: it takes [batch, {expected}], "
            f"vectors of length {expected} (its latent_dim)"
        )
    return session.run(["image"], {"z": z})[0]


def encode(session: onnxruntime.InferenceSession, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, H, W, C] (or one [H, W, C]) in [0, 1] -> (mu, log_var), each [N, latent_dim]."""
    images = np.asarray(images, dtype=np.float32)
    images = images[None] if images.ndim == 3 else images
    expected = list(session.get_inputs()[0].shape[1:])
    if images.ndim != 4 or list(images.shape[1:]) != expected:
        raise ValueError(
            f"images of shape {list(images.shape)} do not fit this encoder: it takes "
            f"[batch, {', '.join(map(str, expected))}] (NHWC, values in [0, 1])"
        )
    return tuple(session.run(["mu", "log_var"], {"image": images}))


if __name__ == "__main__":
    not_a_script(__file__)
