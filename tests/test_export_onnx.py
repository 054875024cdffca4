"""export_onnx.py: names, shapes, metadata, dynamic batch, parity with Keras, rewrites, errors.

Tiny untrained runs (16x16 images, latent 8) are built once per module with random batch-norm
statistics, so the converted graphs fold non-trivial constants.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import export_onnx  # noqa: E402
import generate  # noqa: E402
import inference  # noqa: E402
import runs as runs_module  # noqa: E402
from errors import UserError  # noqa: E402
from latent import LatentDensity, write_density  # noqa: E402
from runs import RunFolderError  # noqa: E402

SIZE, LATENT = 16, 8


def make_run(
    folder: Path,
    channels: int,
    filters=(16, 32),
    upsampling: str = "nearest",
    model: str = "vae",
    seed: int = 0,
    decoder_filters=None,
    output_filters: int = 0,
) -> Path:
    """A run folder like train.py writes (config.json, encoder.keras, decoder.keras), untrained."""
    import keras

    import vae

    keras.utils.set_random_seed(seed)
    built = vae.build_vae(
        vae.ModelConfig(
            image_size=SIZE,
            channels=channels,
            latent_dim=LATENT,
            filters=filters,
            hidden_units=32,
            upsampling=upsampling,
            decoder_filters=decoder_filters,
            output_filters=output_filters,
        )
    )
    rng = np.random.default_rng(seed)
    for part in (built.encoder, built.decoder):
        for layer in part.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                width = layer.moving_mean.shape[0]
                layer.moving_mean.assign(rng.normal(0, 0.5, width).astype(np.float32))
                layer.moving_variance.assign(rng.uniform(0.5, 2.0, width).astype(np.float32))
                layer.gamma.assign(rng.uniform(0.5, 1.5, width).astype(np.float32))
                layer.beta.assign(rng.normal(0, 0.3, width).astype(np.float32))
    folder.mkdir(parents=True)
    built.encoder.save(folder / "encoder.keras")
    built.decoder.save(folder / "decoder.keras")
    config = {
        "format": "celeba-vae-run/1",
        "crop": 148,
        "model": model,
        "latent_dim": LATENT,
        "image_size": SIZE,
        "channels": channels,
        "filters": list(filters),
        "decoder_filters": list(decoder_filters) if decoder_filters else None,
        "output_filters": output_filters,
        "hidden_units": 32,
        "upsampling": upsampling,
        "value_range": [0.0, 1.0],
        "layout": "NHWC",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """rgb: exported with --out (and attribute directions to copy); gray: an autoencoder with
    fewer filters (every upsampling becomes a sub-pixel convolution), exported into its run."""
    root = tmp_path_factory.mktemp("export_onnx")
    rgb = make_run(root / "rgb", channels=3)
    directions = {
        "format": "celeba-vae-attributes/2",
        "latent_dim": LATENT,
        "attributes": {"Smiling": {"direction": [0.1] * LATENT, "positives": 10, "negatives": 12, "held": ["Male"]}},
    }
    (rgb / "attribute_directions.json").write_text(json.dumps(directions))
    write_density(LatentDensity.standard_normal(LATENT), rgb)
    gray = make_run(root / "gray", channels=1, filters=(8, 16), model="ae", seed=1)
    export_onnx.main(["--run", str(rgb), "--out", str(root / "exported")])
    export_onnx.main(["--run", str(gray)])
    return {"root": root, "rgb": rgb, "gray": gray, "exported": root / "exported"}


def keras_model(run: Path, part: str):
    import keras

    return keras.saving.load_model(run / f"{part}.keras", safe_mode=True)


def test_import_does_not_load_tensorflow():
    code = (
        "import sys, export_onnx, inference; "
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'tf2onnx', 'onnx'}); "
        "print(','.join(loaded))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_names_shapes_and_metadata(runs):
    decoder = inference.make_session(runs["exported"] / "decoder.onnx", threads=1)
    encoder = inference.make_session(runs["exported"] / "encoder.onnx", threads=1)
    assert [(i.name, i.shape, i.type) for i in decoder.get_inputs()] == [("z", ["batch", LATENT], "tensor(float)")]
    assert [(o.name, o.shape) for o in decoder.get_outputs()] == [("image", ["batch", SIZE, SIZE, 3])]
    assert [(i.name, i.shape) for i in encoder.get_inputs()] == [("image", ["batch", SIZE, SIZE, 3])]
    assert [(o.name, o.shape) for o in encoder.get_outputs()] == [
        ("mu", ["batch", LATENT]),
        ("log_var", ["batch", LATENT]),
    ]
    for session, part in ((decoder, "decoder"), (encoder, "encoder")):
        metadata = inference.check_model(session, part)
        assert metadata == inference.read_onnx_metadata(runs["exported"] / f"{part}.onnx")
        expected = {
            "format": "celeba-vae-onnx/1",
            "part": part,
            "latent_dim": str(LATENT),
            "image_size": str(SIZE),
            "channels": "3",
            "crop": "148",
            "model": "vae",
            "value_range": "0,1",
            "layout": "NHWC",
            "reconstruction": "mse",
            "attribute_directions": "attribute_directions.json beside this file",
            "latent_density": "latent_density.json beside this file: sample z from it (latent.py)",
        }
        assert expected.items() <= metadata.items()
        assert metadata["input"] and metadata["output"]
        assert float(metadata["parity_max_abs_diff"]) < 1e-4


@pytest.mark.parametrize("name", ["attribute_directions.json", "latent_density.json", "config.json"])
def test_json_files_copied_beside_the_files(runs, name):
    copied = json.loads((runs["exported"] / name).read_text())
    assert copied == json.loads((runs["rgb"] / name).read_text())
    assert not list(runs["exported"].glob(".*tmp"))  # no temporary files left behind


@pytest.mark.parametrize("run_name", ["rgb", "gray"])
def test_dynamic_batch_and_parity_with_keras(runs, run_name):
    folder = runs["exported"] if run_name == "rgb" else runs["gray"]
    channels = 3 if run_name == "rgb" else 1
    decoder = inference.make_session(folder / "decoder.onnx", threads=1)
    encoder = inference.make_session(folder / "encoder.onnx", threads=1)
    keras_decoder, keras_encoder = keras_model(runs[run_name], "decoder"), keras_model(runs[run_name], "encoder")
    rng = np.random.default_rng(3)
    for batch in (1, 7, 64):
        z = rng.standard_normal((batch, LATENT)).astype(np.float32)
        images = inference.decode(decoder, z)
        assert images.shape == (batch, SIZE, SIZE, channels) and images.dtype == np.float32
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert np.abs(images - np.asarray(keras_decoder(z, training=False))).max() < 1e-4
        mu, log_var = inference.encode(encoder, images)
        want_mu, want_log_var = keras_encoder(images, training=False)
        assert mu.shape == log_var.shape == (batch, LATENT)
        assert np.abs(mu - np.asarray(want_mu)).max() < 1e-4
        assert np.abs(log_var - np.asarray(want_log_var)).max() < 1e-4
    assert inference.decode(decoder, np.zeros(LATENT)).shape == (1, SIZE, SIZE, channels)  # one vector


def test_the_decoder_keeps_only_the_layout_transpose(runs):
    rgb = export_onnx.op_counts(runs["exported"] / "decoder.onnx")
    assert rgb["Transpose"] <= 1 and rgb["Tile"] == 0, rgb
    assert rgb["Resize"] == 1 and rgb["DepthToSpace"] == 1, rgb  # 16 filters: Resize; 3 filters: sub-pixel
    gray = export_onnx.op_counts(runs["gray"] / "decoder.onnx")
    assert gray["Resize"] == 0 and gray["DepthToSpace"] == 2, gray


def test_plain_and_transpose_upsampling_exports_match_keras(runs, capsys):
    """--plain (no rewrites) and a Conv2DTranspose decoder both convert within tolerance."""
    config = json.loads((runs["rgb"] / "config.json").read_text())
    metadata = export_onnx.onnx_metadata(config, "decoder", runs["rgb"])
    plain = export_onnx.convert_checked(keras_model(runs["rgb"], "decoder"), "decoder", metadata, rewrite=False)
    assert export_onnx.op_counts(plain)["Resize"] == 0
    transposed = make_run(runs["root"] / "transposed", channels=3, upsampling="transpose", seed=2)
    export_onnx.main(["--run", str(transposed)])
    assert "max |ONNX - Keras|" in capsys.readouterr().out
    session = inference.make_session(transposed / "decoder.onnx", threads=1)
    z = np.random.default_rng(4).standard_normal((7, LATENT)).astype(np.float32)
    want = np.asarray(keras_model(transposed, "decoder")(z, training=False))
    assert np.abs(inference.decode(session, z) - want).max() < 1e-4


@pytest.mark.parametrize("extra", [{"decoder_filters": (24, 48)}, {"output_filters": 8}])
def test_a_wider_decoder_or_one_with_an_output_block_exports_and_matches_keras(runs, extra):
    wide = make_run(runs["root"] / "_".join(map(str, extra)), channels=3, seed=3, **extra)
    export_onnx.main(["--run", str(wide)])
    session = inference.make_session(wide / "decoder.onnx", threads=1)
    z = np.random.default_rng(5).standard_normal((5, LATENT)).astype(np.float32)
    want = np.asarray(keras_model(wide, "decoder")(z, training=False))
    assert (
        keras_model(wide, "decoder").get_layer("project").units == 4 * 4 * (extra.get("decoder_filters") or (0, 32))[-1]
    )
    assert np.abs(inference.decode(session, z) - want).max() < 1e-4


def test_parity_failure_fails_loudly_and_writes_nothing(runs, monkeypatch, tmp_path):
    real = export_onnx.keras_outputs
    monkeypatch.setattr(export_onnx, "keras_outputs", lambda model, x: [o + 0.01 for o in real(model, x)])
    with pytest.raises(UserError, match=r"decoder: ONNX and Keras differ by up to 0\.01.*nothing was written"):
        export_onnx.main(["--run", str(runs["gray"]), "--out", str(tmp_path / "bad")])
    bad = tmp_path / "bad"
    assert not bad.exists() or not any(bad.iterdir())


def test_both_parts_share_an_export_id_and_the_usual_file_mode(runs):
    metadata = {
        part: inference.read_onnx_metadata(runs["exported"] / f"{part}.onnx") for part in ("decoder", "encoder")
    }
    assert len(metadata["decoder"]["export_id"]) == 16
    assert inference.pair_mismatch(metadata["decoder"], metadata["encoder"]) == ""
    gray = inference.read_onnx_metadata(runs["gray"] / "decoder.onnx")
    assert gray["export_id"] != metadata["decoder"]["export_id"] and gray["source_run"] == "gray"
    umask = os.umask(0)
    os.umask(umask)
    for name in ("decoder.onnx", "encoder.onnx", "config.json", "latent_density.json"):
        assert (runs["exported"] / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_failed_export_leaves_the_previous_pair_and_a_mixed_pair_is_refused(runs, monkeypatch, tmp_path):
    """Run A exported to a folder, then run B into the same folder with an encoder that fails its
    parity check: nothing of B is written. A folder that holds a mixed pair anyway (copied by
    hand) is refused by every script that needs the encoder."""
    folder = tmp_path / "exp"
    shutil.copytree(runs["exported"], folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    other = make_run(tmp_path / "other", channels=3, seed=3)
    real = export_onnx.keras_outputs

    def encoder_off(model, x):  # only the encoder has two outputs
        outputs = real(model, x)
        return [o + 0.01 for o in outputs] if len(outputs) == 2 else outputs

    monkeypatch.setattr(export_onnx, "keras_outputs", encoder_off)
    with pytest.raises(UserError, match=r"encoder: ONNX and Keras differ by up to 0\.01.*nothing was written"):
        export_onnx.main(["--run", str(other), "--out", str(folder)])
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    monkeypatch.undo()

    export_onnx.main(["--run", str(other), "--out", str(tmp_path / "b")])
    shutil.copy(tmp_path / "b" / "decoder.onnx", folder / "decoder.onnx")
    message = "encoder.onnx and decoder.onnx in .*exp come from different exports \\(export_id '[0-9a-f]{16}' vs"
    with pytest.raises(RunFolderError, match=message + ".*export both again: python export_onnx.py --run RUN --out"):
        runs_module.open_backend(folder).encode(np.zeros((1, SIZE, SIZE, 3)))
    with pytest.raises(RunFolderError, match=message):
        generate.main(
            [
                "--run",
                str(folder),
                "--mode",
                "interpolate",
                "--no-align",
                "--images",
                *[str(p) for p in faces(tmp_path)],
            ]
        )


def test_a_full_disk_is_one_line_and_leaves_the_previous_pair(runs, monkeypatch, tmp_path):
    """The disk fills up while the encoder is written: the folder keeps the previous export, whole."""
    import onnx

    folder = tmp_path / "exp"
    shutil.copytree(runs["exported"], folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    real_save = onnx.save

    def disk_fills_up(proto, path, *args, **kwargs):
        if Path(path).name.startswith(".encoder.onnx"):
            Path(path).write_bytes(b"\0" * 100)  # what was written before the disk was full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(proto, path, *args, **kwargs)

    monkeypatch.setattr(onnx, "save", disk_fills_up)
    with pytest.raises(UserError, match=f"^cannot write into {folder} \\(No space left on device\\); free some space"):
        export_onnx.main(["--run", str(runs["gray"]), "--out", str(folder)])
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    monkeypatch.undo()

    def copy_fills_up(source, target, *args, **kwargs):  # the models are written, the run's JSON files not
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", copy_fills_up)
    with pytest.raises(UserError, match="No space left on device"):
        export_onnx.main(["--run", str(runs["rgb"]), "--out", str(folder)])
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # models and JSON: all or none
    with pytest.raises(UserError, match="No space left on device"):
        export_onnx.main(["--run", str(runs["rgb"]), "--out", str(tmp_path / "new" / "exp")])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exp"]  # the folders made for it are gone


def faces(folder: Path) -> list[Path]:
    paths = [folder / "a.png", folder / "b.png"]
    for seed, path in enumerate(paths):
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return paths


def test_run_folder_errors(tmp_path):
    with pytest.raises(UserError, match=r"run folder .*missing does not exist; train first: python train.py"):
        export_onnx.main(["--run", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        UserError,
        match=r".*empty has no config.json; give a run folder written by train.py, or train first",
    ):
        export_onnx.main(["--run", str(tmp_path / "empty")])
    (tmp_path / "untrained").mkdir()
    config = {"format": "celeba-vae-run/1", "latent_dim": 8, "image_size": 16, "channels": 3}
    (tmp_path / "untrained" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r".*untrained has no encoder.keras or decoder.keras.*train first"):
        export_onnx.main(["--run", str(tmp_path / "untrained")])


def test_an_edited_config_is_named_rather_than_the_files_that_fit_the_models(runs, tmp_path):
    """The run's latent_density.json and attribute_directions.json fit its models, not the edited
    config.json: the message is about config.json."""
    run = Path(shutil.copytree(runs["rgb"], tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "latent_dim": 2 * LATENT}))
    with pytest.raises(UserError, match=r"^.*encoder.keras takes .*come from different runs; put back the conf"):
        export_onnx.main(["--run", str(run), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ({"format": "celeba-vae-attributes/2", "latent_dim": 3, "attributes": {}}, "holds directions for latent size 3, this model has 8"),
        ([1, 2], r"is not a celeba-vae-attributes/2 file \(format 'list'\)"),
        (
            {"format": "celeba-vae-attributes/2", "latent_dim": LATENT,
             "attributes": {"Smiling": {"direction": [float("nan")] * LATENT, "positives": 9, "negatives": 9}}},
            f"has a direction of Smiling that is not a list of {LATENT} finite numbers",
        ),
    ],
)  # fmt: skip
def test_damaged_attribute_directions_are_refused(runs, tmp_path, content, message):
    """A NaN direction would be copied beside decoder.onnx and turn the page's faces black."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "encoder.keras", "decoder.keras"):
        (run / name).write_bytes((runs["rgb"] / name).read_bytes())
    (run / "attribute_directions.json").write_text(json.dumps(content))
    with pytest.raises(UserError, match=f"attribute_directions.json {message}; recompute it with generate.py"):
        export_onnx.main(["--run", str(run), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_an_opset_tf2onnx_does_not_take_is_one_line(runs, tmp_path):
    with pytest.raises(UserError, match="^make_sure failure: Opset 99 is not supported"):
        export_onnx.main(["--run", str(runs["gray"]), "--out", str(tmp_path / "out"), "--opset", "99"])
    assert not (tmp_path / "out").exists()


def test_session_helpers_give_clear_errors(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing.onnx does not exist; export it with"):
        inference.make_session(tmp_path / "nothing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"onnxruntime cannot load .*broken.onnx"):
        inference.make_session(tmp_path / "broken.onnx")
    decoder = inference.make_session(runs["exported"] / "decoder.onnx", threads=1)
    encoder = inference.make_session(runs["exported"] / "encoder.onnx", threads=1)
    with pytest.raises(ValueError, match=r"latent vectors of shape \[2, 5\] do not fit this decoder.*\[batch, 8\]"):
        inference.decode(decoder, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"images of shape \[1, 8, 8, 3\] do not fit this encoder"):
        inference.encode(encoder, np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"is not an exported decoder.*re-export"):
        inference.check_model(encoder, "decoder", name="encoder.onnx")
    gray_decoder = inference.make_session(runs["gray"] / "decoder.onnx", threads=1)
    assert inference.check_model(gray_decoder, "decoder")["channels"] == "1"


def test_help_describes_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_onnx.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--run", "--out", "--tolerance", "--threads", "--plain", "default"):
        assert flag in text
