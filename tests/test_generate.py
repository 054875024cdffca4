"""generate.py end to end on a tiny run trained here: every mode on both backends, grid
layouts, seeds, the attribute cache, the TensorFlow-free ONNX path and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, bomb_png, face_image
from PIL import Image

import generate
import latent
import train
from errors import UserError
from images import GRID_PADDING, LABEL_HEIGHT, load_face, to_uint8
from runs import OnnxBackend, RunFolderError, open_backend

SIZE, LATENT = 16, 8  # as set by tiny_train_args


@pytest.fixture(scope="session")
def run(tiny_run) -> Path:
    """The shared tiny run (conftest), with its ONNX export beside the Keras files."""
    return tiny_run


def generate_grid(run: Path, out: Path, *args: str) -> tuple[Image.Image, list[list[Path]]]:
    """Run generate.main with --save-individual; the grid and its single faces by row."""
    written = generate.main(["--run", str(run), "--out", str(out), "--save-individual", *args])
    assert written == out
    tiles = sorted(out.with_suffix("").glob("r*_c*.png"))
    rows: dict[int, list[Path]] = {}
    for tile in tiles:
        rows.setdefault(int(tile.name[1:3]), []).append(tile)
    return Image.open(out), [rows[r] for r in sorted(rows)]


def exit_message(argv: list[str]) -> str:
    """The line generate.py prints for the UserError that generate.main raises; asserts it is one line."""
    with pytest.raises(UserError) as error_info:
        generate.main(argv)
    message = f"error: {error_info.value}"
    assert "\n" not in message, message
    return message


# mode arguments -> (faces per grid row, whether columns are labelled)
LAYOUTS = {
    "reconstruct": (["--count", "3", "--sampled", "1"], [3, 3, 3], True),
    "sample": (["--samples", "6", "--columns", "4", "--temperature", "0.5", "1"], [4, 2, 4, 2], False),
    "weighted": (["--count", "3", "--samples", "4", "--weights", "1", "1", "2"], [3, 1, 4], False),
    "interpolate": (["--pairs", "2", "--steps", "4"], [6, 6, 6, 6], True),
    "attribute": (["--attribute", "Smiling", "--count", "2", "--alphas", "-1", "0", "1"], [4, 4], True),
    "traverse": (["--dims", "0", "3", "--steps", "5"], [6, 6], True),
}


@pytest.mark.parametrize("backend", ["keras", "onnx"])
@pytest.mark.parametrize("mode", list(LAYOUTS))
def test_every_mode_writes_its_grid(run, kaggle_celeba, tmp_path, capsys, mode, backend):
    args, row_lengths, column_labels = LAYOUTS[mode]
    out = tmp_path / f"{mode}.png"
    grid, rows = generate_grid(run, out, "--mode", mode, "--backend", backend, "--data", str(kaggle_celeba), *args)
    assert [len(row) for row in rows] == row_lengths
    assert Image.open(rows[-1][-1]).size == (SIZE, SIZE)
    title = mode == "sample"  # only sample grids are drawn from random latents here, so only they say by what
    top = (LABEL_HEIGHT if column_labels else 0) + (LABEL_HEIGHT if title else 0)
    assert grid.height == top + len(row_lengths) * (SIZE + GRID_PADDING) + GRID_PADDING
    assert grid.width >= max(row_lengths) * (SIZE + GRID_PADDING) + GRID_PADDING
    assert f"wrote {out}" in capsys.readouterr().out


# --random: mode arguments -> faces per grid row (no input column: decoded latents only)
RANDOM_LAYOUTS = {
    "interpolate": (["--random", "4", "--steps", "4"], [4, 4, 4, 4]),  # 2 pairs x lerp, slerp
    "attribute": (["--random", "2", "--attribute", "Smiling", "--alphas", "-1", "0", "1"], [3, 3]),
    "traverse": (["--random", "2", "--dims", "0", "3", "--steps", "5"], [5, 5, 5, 5]),  # 2 samples x 2 dims
}


@pytest.mark.parametrize("backend", ["keras", "onnx"])
@pytest.mark.parametrize("mode", list(RANDOM_LAYOUTS))
def test_random_modes_show_decoded_latents_only(run, kaggle_celeba, tmp_path, monkeypatch, mode, backend):
    def no_real_faces(*args, **kwargs):
        raise AssertionError("--random must not choose real faces")

    monkeypatch.setattr(generate, "choose_faces", no_real_faces)
    args, row_lengths = RANDOM_LAYOUTS[mode]
    out = tmp_path / f"{mode}.png"
    grid, rows = generate_grid(run, out, "--mode", mode, "--backend", backend, "--data", str(kaggle_celeba), *args)
    assert [len(row) for row in rows] == row_lengths
    # column labels and a title naming the sampler
    assert grid.height == 2 * LABEL_HEIGHT + len(row_lengths) * (SIZE + GRID_PADDING) + GRID_PADDING


@pytest.mark.parametrize("sampler", ["prior", "density"])
def test_random_starts_are_seeded_samples_of_the_chosen_sampler(run, tmp_path, sampler):
    """The first tile of a --random path is the decoded first sample drawn with --seed: T z with
    z ~ N(0, I) for the prior, the fitted density's sample at T for the density (train.py fitted it)."""
    paths = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        out = tmp_path / f"{name}.png"
        _, rows = generate_grid(run, out, "--mode", "interpolate", "--random", "3", "--chain", "--steps", "3",
                                "--method", "slerp", "--temperature", "0.5", "--seed", seed,
                                "--sampler", sampler)  # fmt: skip
        assert [len(row) for row in rows] == [5]
        paths.append(out.read_bytes())
    assert paths[0] == paths[1] != paths[2]
    if sampler == "prior":
        z = 0.5 * np.random.default_rng(6).standard_normal((1, LATENT))
    else:
        z = latent.read_density(run / latent.DENSITY_FILE).sample(3, np.random.default_rng(6), 0.5)[:1]
    expected = to_uint8(open_backend(run, "keras").decode(z))[0]
    assert np.array_equal(np.asarray(Image.open(rows[0][0])), expected)


def test_random_conflicts_are_one_line_errors(run, kaggle_celeba, tmp_path):
    base = ["--run", str(run), "--data", str(kaggle_celeba), "--out", str(tmp_path / "x.png"), "--random", "2"]
    for mode in ("reconstruct", "weighted"):
        assert f"--mode {mode} needs real faces" in exit_message([*base, "--mode", mode])
    assert "--samples, not --random" in exit_message([*base, "--mode", "sample"])
    assert "drop --images" in exit_message([*base, "--mode", "attribute", "--images", "a.jpg"])
    assert "drop --ids" in exit_message([*base, "--mode", "interpolate", "--ids", "1", "2"])
    assert "drop --identity" in exit_message([*base, "--mode", "traverse", "--identity", "0"])
    assert "drop --origin" in exit_message([*base, "--mode", "traverse", "--origin"])
    assert "even number" in exit_message([*base[:-1], "3", "--mode", "interpolate"])
    assert not (tmp_path / "x.png").exists()


def test_backends_agree_and_default_output_path(run, kaggle_celeba, tmp_path):
    common = ["--run", str(run), "--mode", "interpolate", "--data", str(kaggle_celeba), "--steps", "3"]
    keras_png = generate.main([*common, "--out", str(tmp_path / "keras.png")])
    onnx_png = generate.main([*common, "--backend", "onnx", "--threads", "1"])
    assert onnx_png == run / "generated" / "interpolate.png"
    difference = np.abs(np.asarray(Image.open(keras_png), int) - np.asarray(Image.open(onnx_png), int))
    assert difference.max() <= 2  # within rounding of float32 differences


def test_same_seed_same_bytes(run, kaggle_celeba, tmp_path):
    for mode in ("reconstruct", "weighted"):  # random faces and random noise
        paths = []
        for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
            out = tmp_path / f"{mode}_{name}.png"
            generate.main(["--run", str(run), "--mode", mode, "--data", str(kaggle_celeba), "--sampled", "1",
                           "--seed", seed, "--out", str(out)])  # fmt: skip
            paths.append(out.read_bytes())
        assert paths[0] == paths[1]
        assert paths[0] != paths[2]


def test_inputs_by_file_id_identity_chain_and_origin(run, kaggle_celeba, tmp_path):
    images = kaggle_celeba / "img_align_celeba" / "img_align_celeba"
    base = ["--run", str(run), "--data", str(kaggle_celeba)]
    _, rows = generate_grid(run, tmp_path / "chain.png", *base, "--mode", "interpolate", "--chain",
                            "--ids", "1", "000002", "000003.jpg", "--steps", "3", "--method", "slerp")  # fmt: skip
    assert [len(row) for row in rows] == [1 + 5 + 1]
    _, rows = generate_grid(run, tmp_path / "identity.png", *base, "--mode", "weighted", "--identity", "0",
                            "--samples", "2")  # fmt: skip
    assert [len(row) for row in rows] == [4, 1, 2]  # identity 0 has 000001..000004
    _, rows = generate_grid(run, tmp_path / "files.png", "--mode", "reconstruct",
                            "--no-align", "--images", str(images / "000007.jpg"), str(images / "000008.jpg"))  # fmt: skip
    assert [len(row) for row in rows] == [2, 2]
    _, rows = generate_grid(run, tmp_path / "origin.png", "--mode", "traverse", "--origin", "--steps", "3")
    assert [len(row) for row in rows] == [3] * LATENT  # no --data: dimensions 0..7, no input column


def test_attribute_directions_are_cached_and_reused(run, kaggle_celeba, tmp_path, capsys):
    directions = run / "attribute_directions.json"
    directions.unlink(missing_ok=True)
    base = ["--run", str(run), "--mode", "attribute", "--count", "1", "--out", str(tmp_path / "a.png")]
    generate.main([*base, "--data", str(kaggle_celeba), "--attribute", "Smiling", "Male"])
    assert "images with Male held fixed, norm" in capsys.readouterr().out
    saved = json.loads(directions.read_text())
    assert saved["format"] == "celeba-vae-attributes/2" and saved["latent_dim"] == LATENT
    # 30 labelled fixture images, half smiling; two unreadable ones (both smiling) are skipped.
    smiling, male = saved["attributes"]["Smiling"], saved["attributes"]["Male"]
    assert (smiling["positives"], smiling["negatives"]) == (13, 15)
    assert len(smiling["direction"]) == LATENT
    assert (smiling["held"], male["held"]) == (["Male"], [])
    stale = {**saved, "format": "celeba-vae-attributes/1"}  # directions without a held label
    directions.write_text(json.dumps(stale))
    assert "is not a celeba-vae-attributes/2 file" in exit_message([*base, "--attribute", "Smiling"])
    directions.write_text(json.dumps(saved))
    # Cached: no --data needed for the direction (faces given as files), on the ONNX backend too.
    face = next((kaggle_celeba / "img_align_celeba" / "img_align_celeba").glob("000001.jpg"))
    generate.main([*base, "--backend", "onnx", "--attribute", "smiling", "--no-align", "--images", str(face)])
    assert "read from" in capsys.readouterr().out
    saved["latent_dim"] = LATENT + 1
    directions.write_text(json.dumps(saved))
    assert "--recompute" in exit_message([*base, "--no-align", "--images", str(face)])
    generate.main([*base, "--data", str(kaggle_celeba), "--recompute"])
    assert json.loads(directions.read_text())["latent_dim"] == LATENT


def test_cached_directions_are_refused_after_more_training(run, kaggle_celeba, tmp_path):
    """The cache carries a fingerprint of the encoder: one more epoch makes it stale."""
    trained = tmp_path / "run"
    shutil.copytree(run, trained)
    base = ["--run", str(trained), "--mode", "attribute", "--count", "1", "--out", str(tmp_path / "a.png")]
    generate.main([*base, "--data", str(kaggle_celeba), "--attribute", "Smiling", "--recompute"])
    before = json.loads((trained / "attribute_directions.json").read_text())
    assert len(before["encoder_probe"]) == LATENT
    train.main(["--resume", str(trained), "--epochs", "3", "--verbose", "0"])
    message = exit_message([*base, "--attribute", "Smiling"])
    assert "other encoder weights" in message and "--recompute" in message
    generate.main([*base, "--data", str(kaggle_celeba), "--attribute", "Smiling", "--recompute"])
    after = json.loads((trained / "attribute_directions.json").read_text())
    assert np.abs(np.subtract(after["encoder_probe"], before["encoder_probe"])).max() > generate.PROBE_TOLERANCE
    generate.main([*base, "--backend", "keras", "--attribute", "Smiling"])  # fresh cache, reused
    damaged = {**after, "encoder_probe": ["not", "numbers"]}
    (trained / "attribute_directions.json").write_text(json.dumps(damaged))
    assert "has an encoder_probe that is not a list of 8 finite numbers" in exit_message(
        [*base, "--attribute", "Smiling"]
    )


def test_onnx_path_imports_no_tensorflow(run, kaggle_celeba, tmp_path):
    """An ONNX-only folder (no config.json, no .keras): every ONNX mode, directions computed
    through the ONNX encoder, and neither TensorFlow nor Keras loaded."""
    onnx_run = tmp_path / "onnx_only"
    onnx_run.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(run / name, onnx_run / name)
    script = f"""
import sys, generate
base = ["--run", {str(onnx_run)!r}, "--backend", "onnx", "--data", {str(kaggle_celeba)!r}, "--threads", "1"]
for mode in ("sample", "interpolate", "weighted", "attribute", "reconstruct", "traverse"):
    generate.main([*base, "--mode", mode])
for mode in ("interpolate", "attribute", "traverse"):
    generate.main([*base, "--mode", mode, "--random", "2"])
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx")))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout
    assert len(list((onnx_run / "generated").glob("*.png"))) == 6
    assert (onnx_run / "attribute_directions.json").is_file()


def test_errors_are_one_line(run, kaggle_celeba, tmp_path):
    base = ["--run", str(run), "--data", str(kaggle_celeba), "--out", str(tmp_path / "x.png")]
    assert "unknown attribute 'Smiley'" in exit_message([*base, "--mode", "attribute", "--attribute", "Smiley"])
    assert "found 0 positive and 28 negative" in exit_message(
        [*base, "--mode", "attribute", "--attribute", "Eyeglasses"]
    )
    missing = str(tmp_path / "missing.jpg")
    assert "does not exist" in exit_message([*base, "--mode", "reconstruct", "--images", missing])
    assert "not found" in exit_message([*base, "--mode", "reconstruct", "--ids", "999999.jpg"])
    assert "even number" in exit_message([*base, "--mode", "interpolate", "--ids", "1", "2", "3"])
    assert "out of range" in exit_message([*base, "--mode", "traverse", "--dims", str(LATENT)])
    assert "does not exist" in exit_message(["--run", str(tmp_path / "nope"), "--mode", "sample"])

    # A folder with a config.json but no models, then a config that disagrees with the models.
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((run / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "latent_dim": LATENT + 1}))
    assert "no decoder.keras or decoder.onnx" in exit_message(["--run", str(broken), "--mode", "sample"])
    assert "has no decoder.onnx" in exit_message(["--run", str(broken), "--mode", "sample", "--backend", "onnx"])
    assert "has no decoder.keras" in exit_message(["--run", str(broken), "--mode", "sample", "--backend", "keras"])
    for name in ("encoder.keras", "decoder.keras", "decoder.onnx"):
        shutil.copy(run / name, broken / name)
    assert "config.json describes" in exit_message(["--run", str(broken), "--mode", "sample", "--backend", "keras"])
    assert "latent size 8" in exit_message(["--run", str(broken), "--mode", "sample", "--backend", "onnx"])

    # Wrong and damaged ONNX files.
    (broken / "config.json").write_text(json.dumps(config))
    shutil.copy(run / "encoder.onnx", broken / "decoder.onnx")
    assert "not an exported decoder" in exit_message(["--run", str(broken), "--mode", "sample", "--backend", "onnx"])
    (broken / "decoder.onnx").write_bytes(b"not an onnx file")
    assert "cannot load" in exit_message(["--run", str(broken), "--mode", "sample", "--backend", "onnx"])


@pytest.mark.parametrize("backend", ["keras", "onnx"])
def test_wrong_latent_length_is_a_clear_error(run, backend):
    model = open_backend(run, backend)
    assert model.decode(np.zeros((2, LATENT))).shape == (2, SIZE, SIZE, 3)
    with pytest.raises(RunFolderError, match="latent size 8"):
        model.decode(np.zeros((2, LATENT - 3)))
    with pytest.raises(RunFolderError, match="model's input"):
        model.encode(np.zeros((1, SIZE * 2, SIZE * 2, 3)))


def test_without_a_run_the_pretrained_model_is_used_without_tensorflow(tmp_path):
    """A fresh clone: `python generate.py --mode interpolate` works with no data and no training."""
    script = (
        "import sys, generate\n"
        f"out = generate.main(['--mode', 'interpolate', '--out', {str(tmp_path / 'i.png')!r}])\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'\n"
        "print(out)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    grid = Image.open(tmp_path / "i.png")
    assert grid.size[1] > 8 * 64  # 4 pairs x (lerp, slerp) rows of 64 px faces


def test_the_readme_python_example_runs_on_the_pretrained_model(tmp_path):
    """The README's onnxruntime example, as written (numpy, onnxruntime and Pillow only), makes a face."""
    readme = (REPO / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "pretrained/celeba64/" in example
    example = example.replace("pretrained/celeba64/", f"{REPO / 'pretrained' / 'celeba64'}/")
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    face = np.asarray(Image.open(tmp_path / "face.png"))
    assert face.shape == (64, 64, 3) and face.std() > 10  # an image, not a flat fill


def test_the_face_editing_app_of_the_onnx_docs_runs(tmp_path):
    """docs/onnx.md's smallest face-editing app, as written, edits the face of a photo."""
    docs = (REPO / "docs" / "onnx.md").read_text()
    example = docs.split("### A face-editing app", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    for path in ("pretrained/celeba64", "tests/photos/obama.jpg"):
        assert f'"{path}"' in example
        example = example.replace(f'"{path}"', f'"{REPO / path}"')
    example += "\nimport sys\nassert not any(name.startswith(('tensorflow', 'keras')) for name in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    edited = np.asarray(Image.open(tmp_path / "edited.png"), np.float32)
    assert edited.shape == (64, 192, 3)
    crop, reconstruction, smiling = edited[:, :64], edited[:, 64:128], edited[:, 128:]
    assert np.abs(reconstruction - crop).mean() < np.abs(reconstruction - 128).mean()  # like the face
    assert np.abs(smiling - reconstruction).mean() > 2  # the smile changed it


def argument_error(argv: list[str], capsys) -> str:
    """The error line argparse prints for a refused flag value (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        generate.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "nan"], "--temperature takes numbers of 0 or more, e.g. 0.7 1 (got nan)"),
        (["--temperature", "1", "inf"], "--temperature takes numbers of 0 or more, e.g. 0.7 1 (got 1.0 inf)"),
        (["--span", "nan"], "--span must be a positive number (got nan)"),
        (["--alphas", "nan"], "--alphas takes finite numbers (got nan)"),
        (["--weights", "nan", "1"], "--weights takes finite numbers (got nan 1.0)"),
        (["--samples", "100000"], "--samples 100000 asks for more faces than a grid shows (1024); for more faces"),
        (["--count", "5000"], "--count 5000 asks for more faces than a grid shows"),
        (["--pairs", "513"], "--pairs 513 asks for more faces than a grid shows"),
        (["--steps", "2000"], "--steps 2000 asks for more faces"),
        (["--scale", "17"], "--scale must be at most 16 (got 17)"),
        (["--threads", "100000"], "--threads must be at most"),
        (["--seed", "-1"], "--seed must not be negative"),
    ],
)
def test_unbounded_or_non_finite_values_are_refused(run, tmp_path, capsys, flags, message):
    out = tmp_path / "x.png"
    line = argument_error(["--run", str(run), "--mode", "sample", "--out", str(out), *flags], capsys)
    assert line.split(": error: ", 1)[1].startswith(message), line
    assert not out.exists()


def no_decoding(*args, **kwargs):
    raise AssertionError("nothing may be decoded")


@pytest.mark.parametrize(
    ("flags", "faces"),
    [
        (["--mode", "sample", "--samples", "600", "--temperature", "0.5", "1"], 1200),
        (["--mode", "interpolate", "--random", "8", "--steps", "200"], 4 * 2 * 200),
        (["--mode", "traverse", "--origin", "--steps", "200"], LATENT * 200),
    ],
)
def test_grids_too_big_to_look_at_are_refused_before_decoding(run, tmp_path, monkeypatch, flags, faces):
    monkeypatch.setattr(OnnxBackend, "decode", no_decoding)
    out = tmp_path / "x.png"
    message = exit_message(["--run", str(run), "--backend", "onnx", "--out", str(out), *flags])
    assert f"this grid would hold {faces} faces" in message and "other --seed values" in message
    assert not out.exists()


def test_grid_pixels_are_bounded_too(run, tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "MAX_GRID_PIXELS", 1_000_000)
    base = ["--run", str(run), "--backend", "onnx", "--mode", "sample", "--samples", "64", "--out"]
    with monkeypatch.context() as patched:
        patched.setattr(OnnxBackend, "decode", no_decoding)
        message = exit_message([*base, str(tmp_path / "x.png"), "--scale", "16"])
    assert "this grid would hold 64 faces of 256 px (4 megapixels), above the limit of 1024 faces and 1 megapixels" in (
        message
    )
    generate.main([*base, str(tmp_path / "y.png"), "--scale", "4"])  # 64 faces of 64 px: 0.26 megapixels


def test_too_many_face_files_are_refused_before_loading(run, tmp_path):
    files = [str(tmp_path / f"{i}.jpg") for i in range(generate.MAX_GRID_FACES + 1)]  # none exists
    assert "1025 faces given, more than a grid shows (1024)" in exit_message(
        ["--run", str(run), "--mode", "reconstruct", "--out", str(tmp_path / "x.png"), "--no-align", "--images", *files]
    )


def test_sixteen_bit_and_oversized_images_given_as_files(run, tmp_path):
    """A 16-bit grey PNG is read as training reads it (not clipped to a white tile); a
    decompression bomb is refused in one line without being decoded."""
    grey = np.asarray(face_image(np.random.default_rng(3)).convert("L"), dtype=np.uint16) * 257
    deep = tmp_path / "deep.png"
    Image.fromarray(grey).save(deep)
    assert Image.open(deep).mode.startswith("I;16")
    _, rows = generate_grid(
        run, tmp_path / "deep_grid.png", "--mode", "reconstruct", "--no-align", "--images", str(deep)
    )
    tile = np.asarray(Image.open(rows[0][0]), dtype=np.float64)
    assert tile.mean() < 200 and tile.std() > 10  # a face, not a white tile
    assert np.array_equal(tile, to_uint8(load_face(deep, SIZE, 3)))
    bomb = bomb_png(tmp_path / "bomb.png")
    message = exit_message(["--run", str(run), "--mode", "reconstruct", "--images", str(bomb)])
    assert f"{bomb} has more than 89,478,485 pixels, too many to decode safely" in message


def test_a_photo_with_an_exif_orientation_is_reconstructed_upright(run, tmp_path):
    """A photo stored sideways with EXIF orientation 6 reaches the model as a viewer shows it:
    its reconstruction is that of the same photo stored upright."""
    upright = face_image(np.random.default_rng(4), (120, 160))
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to view
    plain, sideways = tmp_path / "upright.png", tmp_path / "sideways.png"
    upright.save(plain)
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif)
    _, rows = generate_grid(
        run, tmp_path / "grid.png", "--mode", "reconstruct", "--no-align", "--images", str(plain), str(sideways)
    )
    for row in rows[:2]:  # the faces given, and their reconstructions
        tiles = [np.asarray(Image.open(tile)) for tile in row]
        assert len(tiles) == 2 and np.array_equal(tiles[0], tiles[1])


@pytest.mark.parametrize(
    ("file", "flags", "message"),
    [
        ("list_attr_celeba.csv", ["--mode", "attribute", "--recompute"], "is 'no', but CelebA labels are -1 or 1"),
        ("identity_CelebA.txt", ["--mode", "weighted", "--identity", "0"], "is not a file name and a person number"),
    ],
)
def test_damaged_annotation_files_are_one_line_where_needed(run, kaggle_celeba, tmp_path, file, flags, message):
    data_copy = tmp_path / "celeba"
    shutil.copytree(kaggle_celeba, data_copy)
    content = (data_copy / file).read_text().splitlines()
    content[2] = content[2].replace("-1", "no", 1) if file.endswith(".csv") else "000002.jpg two"
    (data_copy / file).write_text("\n".join(content) + "\n")
    directions = run / "attribute_directions.json"
    cached = directions.read_bytes() if directions.exists() else None
    base = ["--run", str(run), "--data", str(data_copy), "--out", str(tmp_path / "x.png")]
    assert message in exit_message([*base, *flags])
    assert (directions.read_bytes() if directions.exists() else None) == cached
    generate.main([*base, "--mode", "reconstruct", "--count", "2"])  # what does not need the file still works


def test_attribute_directions_from_several_splits(kaggle_celeba):
    dataset = generate.data.find_dataset(kaggle_celeba)
    files = {split: generate.labelled_faces(dataset, split, 0)[0] for split in ("train", "validation")}
    both, labels = generate.labelled_faces(dataset, "train+validation", 0)
    assert both == files["train"] + files["validation"] and len(labels) == len(both)


MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".jpeg": b"\xff\xd8\xff", ".webp": b"RIFF"}


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".JPEG", ".webp"])
def test_the_grid_is_written_in_the_format_its_name_says(run, tmp_path, suffix):
    out = tmp_path / f"grid{suffix}"
    generate.main(["--run", str(run), "--backend", "onnx", "--mode", "sample", "--samples", "4", "--out", str(out)])
    assert out.read_bytes().startswith(MAGIC[suffix.lower()])
    with Image.open(out) as image:
        assert image.format == {".png": "PNG", ".webp": "WEBP"}.get(suffix.lower(), "JPEG")
        assert image.size[0] >= 4 * SIZE


@pytest.mark.parametrize("name", ["grid.gif", "grid.bmp", "grid"])
def test_an_unknown_image_type_is_refused_naming_the_known_ones(run, tmp_path, name):
    out = tmp_path / name
    message = exit_message(["--run", str(run), "--backend", "onnx", "--mode", "sample", "--out", str(out)])
    assert message.endswith(
        "images are written as .png, .jpg, .jpeg, .webp, not "
        + (out.suffix or "a name without an extension")
        + "; give another --out"
    )
    assert list(tmp_path.iterdir()) == []


def test_outputs_never_overwrite_what_the_command_reads(run, kaggle_celeba, tmp_path, monkeypatch):
    """The input photo, the model folder's files and the data folder's, under any name (a symlink,
    a hard link), refused before any model is loaded; the run's generated/ folder is the command's
    own and may be rewritten."""
    face = tmp_path / "face.jpg"
    shutil.copy(kaggle_celeba / "img_align_celeba" / "img_align_celeba" / "000001.jpg", face)
    (tmp_path / "link.jpg").symlink_to(face)
    (tmp_path / "config.png").symlink_to(run / "config.json")
    os.link(run / "decoder.onnx", tmp_path / "decoder.png")
    data_file = kaggle_celeba / "img_align_celeba" / "img_align_celeba" / "000002.jpg"
    protected = [face, run / "config.json", run / "decoder.onnx", run / "samples" / "epoch_001.png", data_file]
    before = {path: path.read_bytes() for path in protected}
    reconstruct = [
        "--run",
        str(run),
        "--backend",
        "onnx",
        "--mode",
        "reconstruct",
        "--no-align",
        "--images",
        str(face),
        "--out",
    ]
    monkeypatch.setattr("runs.open_backend", no_decoding)
    for out, what in [
        (face, f"the input {face}"),
        (tmp_path / "link.jpg", f"the input {face}"),
        (tmp_path / "config.png", f"a file of {run}"),
        (run / "samples" / "epoch_001.png", f"a file of {run}"),
        (tmp_path / "decoder.png", f"{run / 'decoder.onnx'}"),
    ]:
        assert f"--out {out} would overwrite {what}" in exit_message([*reconstruct, str(out)]), out
    message = exit_message([*reconstruct, str(data_file), "--data", str(kaggle_celeba)])
    assert message.endswith(f"would overwrite a file of {kaggle_celeba}, which this command reads; give another --out")
    monkeypatch.undo()
    # a tile of --save-individual is an output too (checked once the grid is known)
    tiles = tmp_path / "grid"
    tiles.mkdir()
    shutil.copy(face, tiles / "r00_c00.png")
    message = exit_message(
        [*reconstruct[:-2], str(tiles / "r00_c00.png"), "--out", str(tmp_path / "grid.png"), "--save-individual"]
    )
    assert "would overwrite the input" in message and not (tmp_path / "grid.png").exists()
    assert {path: path.read_bytes() for path in protected} == before
    # the command line: one line, exit code 1
    result = subprocess.run(
        [sys.executable, "generate.py", *reconstruct, str(face)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: --out {face} would overwrite the input {face}; give another --out"
    ]
    # its own earlier output is rewritten, by default and when named
    for _ in range(2):
        assert (
            generate.main(["--run", str(run), "--backend", "onnx", "--mode", "sample"])
            == run / "generated" / "sample.png"
        )
    generate.main(
        ["--run", str(run), "--backend", "onnx", "--mode", "sample", "--out", str(run / "generated" / "sample.png")]
    )


def test_a_failed_write_leaves_nothing_behind(run, tmp_path, monkeypatch):
    """The disk fills up at the third file of a grid and its single faces: the earlier grid stays,
    no single face, folder or temporary file is left."""
    out = tmp_path / "grid.png"
    out.write_bytes(b"the earlier grid")
    real_save, calls = Image.Image.save, []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    message = exit_message(
        [
            "--run",
            str(run),
            "--backend",
            "onnx",
            "--mode",
            "sample",
            "--samples",
            "4",
            "--out",
            str(out),
            "--save-individual",
        ]
    )
    assert message == f"error: cannot write {out} (No space left on device); give another --out"
    assert len(calls) == 3 and out.read_bytes() == b"the earlier grid"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


@pytest.fixture(scope="module")
def directions_run(run, kaggle_celeba, tmp_path_factory) -> Path:
    """An ONNX-only copy of the run with attribute_directions.json for Smiling."""
    folder = tmp_path_factory.mktemp("directions")
    for name in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(run / name, folder / name)
    generate.main(["--run", str(folder), "--mode", "attribute", "--data", str(kaggle_celeba), "--random", "1",
                   "--out", str(folder / "generated" / "a.png")])  # fmt: skip
    return folder


def damaged_directions(content: dict, damage: str) -> object:
    smiling = content["attributes"]["Smiling"]
    return {
        "a list": [smiling["direction"]],
        "NaN": {**content, "attributes": {"Smiling": {**smiling, "direction": [float("nan")] * LATENT}}},
        "infinity": {**content, "attributes": {"Smiling": {**smiling, "direction": [1.0] * 7 + [float("inf")]}}},
        "words": {**content, "attributes": {"Smiling": {**smiling, "direction": ["up"] * LATENT}}},
        "too short": {**content, "attributes": {"Smiling": {**smiling, "direction": [0.5] * 3}}},
        "attributes a list": {**content, "attributes": [smiling]},
        "entry a number": {**content, "attributes": {"Smiling": 3}},
        "counts": {**content, "attributes": {"Smiling": {**smiling, "positives": "many"}}},
        "held": {**content, "attributes": {"Smiling": {**smiling, "held": "Male"}}},
        "probe NaN": {**content, "encoder_probe": [float("nan")] * LATENT},
    }[damage]


DAMAGE = {
    "a list": "is not a celeba-vae-attributes/2 file (format 'list')",
    "NaN": "has a direction of Smiling that is not a list of 8 finite numbers",
    "infinity": "has a direction of Smiling that is not a list of 8 finite numbers",
    "words": "has a direction of Smiling that is not a list of 8 finite numbers",
    "too short": "has a direction of Smiling that is not a list of 8 finite numbers",
    "attributes a list": "has attributes of type list, not a mapping of names to directions",
    "entry a number": "has a direction of Smiling that is not a list of 8 finite numbers",
    "counts": "has counts of Smiling's images that are not whole numbers",
    "held": "has no list of the labels held fixed for Smiling (held)",
    "probe NaN": "has an encoder_probe that is not a list of 8 finite numbers",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_attribute_directions_are_one_line_and_rebuilt(directions_run, kaggle_celeba, tmp_path, damage):
    """Before: black faces from a NaN, AttributeError or ValueError from the others."""
    folder = tmp_path / "run"
    shutil.copytree(directions_run, folder)
    path = folder / "attribute_directions.json"
    path.write_text(json.dumps(damaged_directions(json.loads(path.read_text()), damage)))
    damaged = path.read_bytes()
    base = ["--run", str(folder), "--mode", "attribute", "--random", "1", "--out", str(tmp_path / "a.png")]
    message = exit_message(base)
    assert message == f"error: {path} {DAMAGE[damage]}; pass --recompute (with --data) to replace it"
    assert path.read_bytes() == damaged and not (tmp_path / "a.png").exists()
    if damage == "NaN":  # --recompute rebuilds the file, and the faces are faces again
        generate.main([*base, "--recompute", "--data", str(kaggle_celeba), "--alphas", "2", "--save-individual"])
        assert latent.attribute_directions_problem(json.loads(path.read_text()), LATENT) is None
        assert np.asarray(Image.open(tmp_path / "a" / "r00_c00.png")).max() > 0  # a NaN decodes to black


def test_attribute_directions_that_are_not_json(directions_run, tmp_path):
    path = tmp_path / "attribute_directions.json"
    for name in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(directions_run / name, tmp_path / name)
    path.write_bytes(b"\xff\xfe not text")
    message = exit_message(["--run", str(tmp_path), "--mode", "attribute", "--random", "1"])
    assert message.startswith(f"error: {path} is not valid JSON (") and message.endswith(
        "pass --recompute (with --data) to replace it"
    )
