"""train.py end to end on tiny fixtures: artifacts, loss falling, resume, EMA, errors, real data."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import CELEBA_SAMPLE, REPO, tiny_train_args, write_faces
from PIL import Image

import data
import epoch_log
import images
import inference
import latent
import runs
import train
import train_cli
import vae
from train_cli import RunError

pytestmark = pytest.mark.slow  # trains models end to end


def history_rows(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_history(run_a: Path, run_b: Path) -> None:
    """Same rows, each figure equal to a relative 1e-6: multi-threaded CPU kernels do not always sum
    in one order, which now and then moves the last digits of a loss (seen under load). Timings aside."""
    rows_a, rows_b = history_rows(run_a), history_rows(run_b)
    assert [row.keys() for row in rows_a] == [row.keys() for row in rows_b]
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        assert {k: float(v) for k, v in row_a.items() if k not in epoch_log.TIMING_COLUMNS} == pytest.approx(
            {k: float(v) for k, v in row_b.items() if k not in epoch_log.TIMING_COLUMNS}, rel=1e-6
        )


def checkpoint_state(run: Path) -> tuple[int, int]:
    """(completed epochs, optimizer iterations) from the newest checkpoint."""
    config = runs.read_config(run)
    epochs, path = train_cli.latest_checkpoint(run)
    model = vae.model_from_config(config)
    model.compile(optimizer=vae.make_optimizer(config))
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return epochs, int(model.optimizer.iterations.numpy())


def test_short_run_writes_everything_and_loss_falls(kaggle_celeba, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def no_pillow(*_):
        raise AssertionError("the latent density's fit decoded an image file again")

    monkeypatch.setattr(runs, "load_face", no_pillow)  # it reads the images training cached
    train.train_command(tiny_train_args(kaggle_celeba, run, "--epochs", "4", "--lr", "3e-3"))
    monkeypatch.undo()
    rows = history_rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["loss"]) < 0.8 * float(rows[0]["loss"])
    assert {"loss", "reconstruction", "kl", "mse", "val_loss", "val_mse", *epoch_log.TIMING_COLUMNS} <= set(rows[0])
    assert all(float(row[column]) > 0 for row in rows for column in epoch_log.TIMING_COLUMNS)
    config = json.loads((run / "config.json").read_text())
    assert config["latent_dim"] == 8 and config["filters"] == [8, 16] and config["image_size"] == 16
    encoder = keras.saving.load_model(run / "encoder.keras", safe_mode=True)
    decoder = keras.saving.load_model(run / "decoder.keras", safe_mode=True)
    assert decoder(np.zeros((2, 8), np.float32)).shape == (2, 16, 16, 3)
    assert [o.shape for o in encoder(np.zeros((1, 16, 16, 3), np.float32))] == [(1, 8), (1, 8)]
    assert Image.open(run / "loss_curves.png").size[0] > 400
    # 8 validation images: originals over reconstructions -> 2 rows of 8 tiles
    assert Image.open(run / "reconstructions" / "epoch_004.png").size == (8 * 18 + 2, 2 * 18 + 2)
    assert Image.open(run / "samples" / "epoch_004.png").size == (8 * 18 + 2, 2 * 18 + 2)
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["epoch_004.weights.h5"]
    # the fitted latent density, over the posterior means of the 26 training images that decode
    density = latent.read_density(run / latent.DENSITY_FILE, latent_dim=8)
    assert density.info["fitted_on"]["split"] == "train" and density.info["fitted_on"]["count"] == 26
    mu = encoder(np.stack([images.load_face(p, 16) for p in train.load_splits(config)[0][:3]]))[0]
    assert np.all(np.isfinite(density.log_likelihood(np.asarray(mu))))


def test_latent_py_fits_again_the_density_training_wrote(tiny_run, tmp_path):
    """`python latent.py --run RUN`, the command a failed fit prints to retry it, writes the density training
    wrote: the same images, seed and mixture sizes, encoded by the encoder.keras training saved."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / latent.DENSITY_FILE).unlink()
    assert latent.main(["--run", str(run)]) == run / latent.DENSITY_FILE
    trained, refitted = (json.loads((folder / latent.DENSITY_FILE).read_text()) for folder in (tiny_run, run))
    assert (refitted["components"], refitted["fitted_on"]) == (trained["components"], trained["fitted_on"])
    for key in ("weights", "means", "cholesky"):
        np.testing.assert_allclose(refitted[key], trained[key], rtol=0, atol=1e-4)


def test_history_gains_the_timing_columns_and_an_older_history_csv_still_reads(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss,val_loss\n1,0.5,0.6\n")  # written before the timings
    history = epoch_log.History(tmp_path, initial_epoch=1)
    timer = epoch_log.EpochTimes(history, {"batch_size": 4, "epochs": 2, "latent_dim": 8}, verbose=0)
    timer.on_epoch_begin(1)
    started = time.perf_counter()
    while time.perf_counter() < started + 0.05:  # steps that take some time (wall-clock: other threads add CPU time)
        pass
    for step in range(3):
        timer.on_train_batch_end(step)
    with timer.backup():
        pass
    timer.on_test_begin()
    timer.on_test_end()
    history.on_epoch_end(1, {"loss": 0.4, "val_loss": 0.5})
    timer.on_epoch_end(1)
    old, new = epoch_log.read_history(tmp_path / "history.csv")
    assert old == {"epoch": 1, "loss": 0.5, "val_loss": 0.6}
    assert new.keys() == {"epoch", "loss", "val_loss", *epoch_log.TIMING_COLUMNS} and new["loss"] == 0.4
    assert new["seconds_steps"] >= 0.05 and new["seconds_artifacts"] >= new["seconds_validation"] >= 0
    assert 0 < new["images_per_cpu_second"] < float("inf")


def test_a_run_on_train_and_validation_chooses_k_on_unseen_images_then_refits_to_both(kaggle_celeba, tmp_path):
    run = tmp_path / "run"
    train.train_command(tiny_train_args(kaggle_celeba, run, "--epochs", "1", "--train-split", "train+validation"))
    dataset = data.find_dataset(kaggle_celeba)
    train_count, validation_count = (len(data.usable_files(dataset.split(name))) for name in ("train", "validation"))
    density = latent.read_density(run / latent.DENSITY_FILE, latent_dim=8)
    assert density.info["fitted_on"]["split"] == "train+validation"
    assert density.info["fitted_on"]["count"] == train_count + validation_count
    selection = density.info["selection"]  # k fitted to the train split's images, scored on the validation's
    assert (selection["fit_count"], selection["heldout_count"]) == (train_count, validation_count)


def test_same_seed_same_result_and_run_folders_inside_the_data_are_not_trained_on(tmp_path):
    write_faces(tmp_path, [f"face{i:03d}.png" for i in range(40)])
    for name in ("a", "b"):  # the second run would see the first run's PNG grids as faces
        train.train_command(tiny_train_args(tmp_path, tmp_path / "runs" / name, "--epochs", "1", "--seed", "7"))
    assert_same_history(tmp_path / "runs" / "a", tmp_path / "runs" / "b")


def test_resume_continues_epochs_and_optimizer_step_and_ends_where_an_uninterrupted_run_does(
    kaggle_celeba, tmp_path, monkeypatch
):
    """Same data order, sampling noise, optimizer state and beta warm-up after --resume: same
    weights. (A constant rate: with cosine, extending --epochs on resume stretches the schedule.)"""
    flags = ("--lr-schedule", "constant", "--seed", "3", "--beta", "1", "--beta-warmup", "100")
    celeba, run = tmp_path / "celeba", tmp_path / "resumed"
    shutil.copytree(kaggle_celeba, celeba)  # damaged below
    train.train_command(tiny_train_args(celeba, tmp_path / "straight", "--epochs", "2", *flags))
    train.train_command(tiny_train_args(celeba, run, "--epochs", "1", *flags))
    assert checkpoint_state(run) == (1, 3)  # 26 readable training images // batch 8
    fit_density = train.fit_density

    def damage_images_then_fit_density(*args) -> None:
        # The same size and time, so that the file cache still stands for them: decoded again, they differ.
        for path in celeba.rglob("*.jpg"):
            status, content = path.stat(), bytearray(path.read_bytes())
            content[len(content) // 3 : -2] = bytes(len(content) - 2 - len(content) // 3)
            path.write_bytes(content)
            os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
        fit_density(*args)

    monkeypatch.setattr(train, "fit_density", damage_images_then_fit_density)
    resume = ["--resume", str(run), "--epochs", "2", "--verbose", "0", "--cache", str(tmp_path / "cache")]
    train.train_command(resume)
    assert checkpoint_state(run) == (2, 6)
    rows = history_rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # the warm-up continued from the saved step: mean beta over steps 3..5 is 4/100
    assert float(rows[1]["beta"]) == pytest.approx(0.04, rel=1e-4)
    straight, resumed = (
        keras.saving.load_model(tmp_path / name / "decoder.keras", safe_mode=True).get_weights()
        for name in ("straight", "resumed")
    )
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert float(history_rows(tmp_path / "straight")[-1]["loss"]) == pytest.approx(float(rows[-1]["loss"]), rel=1e-5)
    # The same density: from the images the resumed run cached in --cache, not from the damaged files.
    straight, resumed = (
        json.loads((tmp_path / name / "latent_density.json").read_text()) for name in ("straight", "resumed")
    )
    for key in ("weights", "means", "cholesky"):
        np.testing.assert_allclose(straight[key], resumed[key], rtol=0, atol=1e-4)
    with pytest.raises(RunError, match="already trained 2 of 2 epochs"):
        train.train_command(["--resume", str(run), "--verbose", "0"])


def test_resume_adds_a_discriminator_phase_that_trains_as_the_one_command_run_does(kaggle_celeba, tmp_path):
    """A plain run extended by --resume with --adversarial from its last step ends with the weights
    of a run given those settings from the start (the cosine schedule ends at the start in both)."""
    phase = ("--adversarial", "0.5", "--adversarial-start", "6", "--discriminator-filters", "4")
    plain = ("--seed", "3", "--ema", "0")  # decoder.keras: the trained weights themselves
    run = tmp_path / "resumed"
    train.train_command(tiny_train_args(kaggle_celeba, tmp_path / "straight", "--epochs", "3", *plain, *phase))
    train.train_command(tiny_train_args(kaggle_celeba, run, "--epochs", "2", *plain))
    config_text = (run / "config.json").read_text()
    too_early = ["--resume", str(run), "--epochs", "3", "--adversarial", "0.5", "--adversarial-start", "5"]
    with pytest.raises(RunError, match="--adversarial-start 5 lies inside the 6 steps trained without a discriminator"):
        train.train_command(too_early)
    assert (run / "config.json").read_text() == config_text
    with pytest.raises(RunError, match="go with --resume only beside --adversarial WEIGHT"):
        train.train_command(["--resume", str(run), "--epochs", "3", "--adversarial-start", "6"])
    from_the_end = ("--adversarial", "0.5", "--adversarial-start", "-3", "--discriminator-filters", "4")
    train.train_command(["--resume", str(run), "--epochs", "3", "--verbose", "0", *from_the_end])
    config = json.loads((run / "config.json").read_text())
    assert (config["adversarial"], config["adversarial_start"]) == (0.5, 6)  # 3 steps before the end of 9
    rows = history_rows(run)
    assert rows[1]["d_loss"] == "" and float(rows[2]["d_loss"]) > 0  # a column from the phase on
    straight, resumed = (
        keras.saving.load_model(tmp_path / name / "decoder.keras", safe_mode=True).get_weights()
        for name in ("straight", "resumed")
    )
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    with pytest.raises(
        RunError, match="trains with a discriminator already, whose settings stay as they are: drop --adv"
    ):
        train.train_command(["--resume", str(run), "--epochs", "4", "--adversarial", "0.3"])


def read_events(folder: Path) -> dict[tuple[str, int], np.ndarray]:
    """{(tag, step): value} of the TensorBoard event files in a folder."""
    found = {}
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found[(value.tag, event.step)] = tf.make_ndarray(value.tensor)
    return found


def test_tensorboard_logs_loss_terms_learning_rate_and_grids(face_folder, tmp_path):
    run = tmp_path / "run"
    train.train_command(tiny_train_args(face_folder, run, "--epochs", "2", "--lr", "2e-3", "--lr-schedule", "constant"))
    rows = history_rows(run)
    scalars = read_events(run / "tensorboard" / "train")
    validation = read_events(run / "tensorboard" / "validation")
    for epoch, row in enumerate(rows):  # Keras' TensorBoard counts epochs from 0
        for term in ("loss", "reconstruction", "kl", "beta", "mse"):
            assert float(scalars[(f"epoch_{term}", epoch)]) == pytest.approx(float(row[term]), rel=1e-6)
            assert float(validation[(f"epoch_{term}", epoch)]) == pytest.approx(float(row[f"val_{term}"]), rel=1e-6)
        assert float(scalars[("epoch_learning_rate", epoch)]) == pytest.approx(2e-3)
    # the grids, as the same pictures as the PNG files: [width, height, PNG bytes]
    grids = read_events(run / "tensorboard" / "grids")
    for name in ("reconstructions", "samples"):
        for epoch in (0, 1):
            logged = Image.open(io.BytesIO(grids[(name, epoch)][2]))
            saved = Image.open(run / name / f"epoch_{epoch + 1:03d}.png")
            np.testing.assert_array_equal(np.asarray(logged), np.asarray(saved.convert(logged.mode)))


def test_progress_is_one_line_per_epoch_when_stdout_is_not_a_terminal(face_folder, tmp_path, capsys):
    run = tmp_path / "run"
    train.train_command(tiny_train_args(face_folder, run, "--epochs", "2", "--verbose", "1", "--no-tensorboard"))
    out = capsys.readouterr().out  # captured: not a terminal
    assert not any(code in out for code in ("\x1b", "\r", "\b"))
    epoch_lines = [line for line in out.splitlines() if " - loss: " in line or line.startswith("Epoch ")]
    assert len(epoch_lines) == 4 and epoch_lines[0] == "Epoch 1/2" and " - val_loss: " in epoch_lines[1]
    # Each epoch's summary on the line after Keras' own, its time left including the latent density's fit.
    lines, summaries = out.splitlines(), [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [lines.index(summary) for summary in summaries] == [lines.index(epoch_lines[i]) + 1 for i in (1, 3)]
    assert summaries[0].endswith(" to go for the 1 epoch(s) left and the latent density")
    assert summaries[1].endswith(" to go for the latent density")
    assert not (run / "tensorboard").exists()


def test_time_left_keeps_the_least_density_fit_estimate(tmp_path, monkeypatch, capsys):
    # The fit's estimate times a small probe fit: work beside the run inflates it now and then.
    estimates = iter([3600.0, 120.0, 1800.0])
    monkeypatch.setattr(latent, "fit_seconds", lambda *args: next(estimates))
    history = epoch_log.History(tmp_path, 0)
    timer = epoch_log.EpochTimes(history, {"epochs": 9, "batch_size": 4, "latent_dim": 8}, 1, 1000, 100)
    for epoch in range(3):
        timer.on_epoch_begin(epoch)
        history.on_epoch_end(epoch, {"loss": 1.0})
        timer.on_epoch_end(epoch)
    to_go = [line.split("; about ")[1] for line in capsys.readouterr().out.splitlines()]
    assert [text.split(" to go")[0] for text in to_go] == ["1 h 00 min", "2 min", "2 min"]


def test_ema_weights_are_the_saved_ones(face_folder, tmp_path):
    def saved_and_raw(run: Path) -> tuple[np.ndarray, np.ndarray]:
        saved = keras.saving.load_model(run / "decoder.keras", safe_mode=True).get_layer("project").get_weights()[0]
        config = runs.read_config(run)
        model = vae.model_from_config(config)
        model.compile(optimizer=vae.make_optimizer(config))
        model.optimizer.build(model.trainable_variables)
        model.load_weights(train_cli.latest_checkpoint(run)[1])
        return saved, model.decoder.get_layer("project").get_weights()[0]

    train.train_command(tiny_train_args(face_folder, tmp_path / "plain", "--epochs", "1", "--ema", "0"))
    saved, raw = saved_and_raw(tmp_path / "plain")
    np.testing.assert_array_equal(saved, raw)
    train.train_command(tiny_train_args(face_folder, tmp_path / "ema", "--epochs", "1", "--ema", "0.5"))
    saved, raw = saved_and_raw(tmp_path / "ema")
    assert np.abs(saved - raw).max() > 1e-6


def test_ema_validation_figures_are_those_of_the_saved_models(face_folder, tmp_path):
    """With --ema, validation and the saved models use the EMA weights with BatchNorm statistics
    recomputed for them: the validation MSE history.csv logs is the saved models' own."""
    run = tmp_path / "run"
    train.train_command(tiny_train_args(face_folder, run, "--epochs", "2", "--ema", "0.9"))
    config = runs.read_config(run)
    encoder, decoder = runs.load_model(run, "encoder", config), runs.load_model(run, "decoder", config)
    files = data.find_dataset(str(face_folder)).split("validation")
    batches = data.make_dataset(files, image_size=16, crop=config["crop"], cache="none", batch_size=len(files))
    originals = next(iter(batches)).numpy()
    mse = float(np.mean((decoder(encoder(originals)[0]).numpy() - originals) ** 2))
    np.testing.assert_allclose(float(history_rows(run)[-1]["val_mse"]), mse, rtol=1e-4)


def tiny_ema_model(kind: str) -> vae.VAE:
    """A small model of `kind` ("vae" or "ae") with EMA weights, compiled and its optimizer built as train.train does."""
    config = {
        "image_size": 16, "channels": 3, "latent_dim": 4, "filters": [4, 8], "hidden_units": 8,
        "upsampling": "nearest", "reconstruction": "mse", "beta": 1.0, "beta_warmup_steps": 0,
        "beta_cycle_steps": 0, "model": kind, "seed": 0, "learning_rate": 1e-2, "epochs": 1, "ema": 0.75,
    }  # fmt: skip
    keras.utils.set_random_seed(0)
    model = vae.model_from_config(config)
    model.compile(optimizer=vae.make_optimizer(config))
    model.optimizer.build(model.trained_variables())
    return model


def test_ema_weights_puts_each_average_into_its_own_variable_and_back():
    """An autoencoder's optimizer averages fewer variables than the model trains (not the log_var
    head): each average must go to its own variable, and every variable come back afterwards."""
    model = tiny_ema_model("ae")
    averaged = {id(v) for v in model.trained_variables()}
    images = tf.constant(np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32))
    model.train_step(images)
    first = {id(v): v.numpy().copy() for v in model.trainable_variables}
    model.train_step(images)
    raw = {id(v): v.numpy().copy() for v in model.trainable_variables}
    momentum = min(0.75, 2 / 11)  # at the second step: the warm-up's (1 + 1) / (10 + 1)
    with train.ema_weights(model):
        for v in model.trainable_variables:
            want = momentum * first[id(v)] + (1 - momentum) * raw[id(v)] if id(v) in averaged else raw[id(v)]
            np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-7, err_msg=v.path)
    for v in model.trainable_variables:
        np.testing.assert_array_equal(v.numpy(), raw[id(v)])


def test_calibration_recomputes_the_statistics_once_per_optimizer_step(monkeypatch):
    """Validation and saving at an epoch's end share the BatchNorm statistics of the EMA weights;
    after a training step they are found anew."""
    model = tiny_ema_model("vae")
    batches = [np.random.default_rng(index).random((4, 16, 16, 3), dtype=np.float32) for index in range(2)]
    calibration, recomputed = train.Calibration(batches, seed=0), []
    recompute = vae.recompute_batch_norm
    monkeypatch.setattr(vae, "recompute_batch_norm", lambda *args: recomputed.append(1) or recompute(*args))

    def statistics() -> list[np.ndarray]:
        return [v.numpy().copy() for v in model.non_trainable_variables]

    calibration.apply(model)
    first = statistics()
    for v in model.non_trainable_variables:  # the training statistics, put back between the two uses
        v.assign(np.zeros_like(v))
    calibration.apply(model)
    assert len(recomputed) == 1
    for found, kept in zip(statistics(), first, strict=True):
        np.testing.assert_array_equal(found, kept)
    model.train_step(tf.constant(batches[0]))
    calibration.apply(model)
    assert len(recomputed) == 2 and not all(np.allclose(a, b) for a, b in zip(statistics(), first, strict=True))


def test_mixed_precision_trains_saves_float32_and_exports_float32_onnx(face_folder, tmp_path, capsys):
    import onnx

    import export_onnx

    run = tmp_path / "run"
    train.train_command(tiny_train_args(face_folder, run, "--epochs", "2", "--mixed-precision", "--lr", "3e-3"))
    rows = history_rows(run)
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])
    decoder = keras.saving.load_model(run / "decoder.keras", safe_mode=True)
    assert decoder.dtype_policy.name == "float32" and decoder.layers[2].compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy was restored
    # The flag alone means on: bfloat16 on a CPU, float16 on a GPU; config.json and the output say so.
    policy, reason = vae.choose_precision("on", vae.cpu_flags(), vae.gpu_capability())
    config = runs.read_config(run)
    assert (config["mixed_precision"], config["mixed_precision_reason"]) == (policy, reason)
    assert f"precision: {policy} ({reason})" in capsys.readouterr().out
    export_onnx.main(["--run", str(run), "--out", str(tmp_path / "onnx")])
    reduced = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    for part in ("encoder", "decoder"):
        graph = onnx.load(tmp_path / "onnx" / f"{part}.onnx").graph
        assert {t.type.tensor_type.elem_type for t in [*graph.input, *graph.output]} == {onnx.TensorProto.FLOAT}
        assert not {t.data_type for t in graph.initializer} & reduced
        assert not {a.i for node in graph.node if node.op_type == "Cast" for a in node.attribute} & reduced
    z = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    session = inference.make_session(tmp_path / "onnx" / "decoder.onnx", threads=1)
    assert np.abs(inference.decode(session, z) - np.asarray(decoder(z, training=False))).max() < 1e-4


def test_nan_loss_stops_with_a_clear_message(face_folder, tmp_path):
    with pytest.raises(RunError, match="loss became NaN/inf at epoch 1.*no epoch finished"):
        train.train_command(tiny_train_args(face_folder, tmp_path / "run", "--epochs", "3", "--lr", "1e30"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--filters", "8,x"], "not a comma-separated list"),
        (["--image-size", "18"], "must be a multiple of 2\\^2"),
        (["--ema", "1.5"], "--ema must be in"),
        (["--latent", "0"], "--latent must be at least 1"),
        (["--lr-warmup", "-5"], "--lr-warmup is a number of steps, 0 or more"),
        (["--beta-cycle", "-1"], "--beta-cycle is a number of steps, 0 or more"),
    ],
)
def test_bad_flags_give_one_line_errors(face_folder, tmp_path, extra, message):
    with pytest.raises(RunError, match=message):
        train.train_command(tiny_train_args(face_folder, tmp_path / "run", *extra))


def test_bad_data_and_run_folders(face_folder, tmp_path):
    with pytest.raises(RunError, match="does not exist.*kaggle datasets download"):
        train.train_command(tiny_train_args(tmp_path / "missing", tmp_path / "run"))
    with pytest.raises(RunError, match="has no config.json"):
        train.train_command(["--resume", str(tmp_path)])
    with pytest.raises(RunError, match=f"^run folder {tmp_path / 'nowhere'} does not exist; give a run folder"):
        train.train_command(["--resume", str(tmp_path / "nowhere")])
    with pytest.raises(RunError, match="--data is required"):
        train.train_command([])


def test_cli_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--data", str(tmp_path / "missing")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: data folder")


@pytest.mark.skipif(not CELEBA_SAMPLE.is_dir(), reason=f"real CelebA sample not found at {CELEBA_SAMPLE}")
def test_real_celeba_sample_loss_falls(tmp_path):
    run = tmp_path / "run"
    args = ["--data", str(CELEBA_SAMPLE), "--out", str(run), "--image-size", "32", "--filters", "16,32,64",
            "--latent", "32", "--limit", "320", "--batch-size", "32", "--epochs", "3", "--lr-warmup", "10", "--verbose", "0"]  # fmt: skip
    train.train_command(args)
    rows = history_rows(run)
    assert float(rows[-1]["loss"]) < 0.7 * float(rows[0]["loss"])
    assert float(rows[-1]["mse"]) < float(rows[0]["mse"])
    assert os.path.getsize(run / "reconstructions" / "epoch_003.png") > 1000


def test_cosine_schedule_decays_over_all_epochs():
    config = {"learning_rate": 2e-3, "lr_schedule": "cosine", "epochs": 10, "ema": 0.0}
    optimizer = vae.make_optimizer(config, steps_per_epoch=50)
    for step, expected in ((0, 2e-3), (250, 2e-3 * (0.05 + 0.95 * 0.5)), (500, 1e-4)):
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("weight", "start", "epochs", "expected"),
    [(0.5, 500, 85, (0.5, 500)), (0.5, -1110, 85, (0.5, 30340)), (0.5, -1110, 6, (0.5, 1110)),
     (0.5, -1110, 5, (0.0, 0)), (0.0, -1110, 85, (0.0, 30340))],
)  # fmt: skip
def test_a_negative_adversarial_start_counts_back_from_the_end_and_a_phase_over_half_the_run_is_dropped(
    weight, start, epochs, expected
):
    config = {"adversarial": weight, "adversarial_start": start, "epochs": epochs}
    phase, note = train.resolved_discriminator_phase(config, steps_per_epoch=370)
    config |= phase
    assert (config["adversarial"], config["adversarial_start"]) == expected
    assert ("no discriminator phase" in note) == (weight > 0 and expected[0] == 0)
    assert (f"from step {expected[1]}" in note) == (expected[0] > 0)


def test_cosine_schedule_ends_where_the_discriminator_starts_and_keeps_its_last_rate():
    config = {"learning_rate": 2e-3, "lr_schedule": "cosine", "epochs": 12, "ema": 0.0}
    config |= {"adversarial": 0.5, "adversarial_start": 500}
    optimizer = vae.make_optimizer(config, steps_per_epoch=50)
    for step, expected in ((0, 2e-3), (250, 2e-3 * (0.05 + 0.95 * 0.5)), (500, 1e-4), (599, 1e-4)):
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_lr_warmup_rises_then_follows_the_schedule(schedule):
    config = {"learning_rate": 2e-3, "lr_schedule": schedule, "lr_warmup_steps": 100, "epochs": 10, "ema": 0.0}
    optimizer = vae.make_optimizer(config, steps_per_epoch=50)
    end = 1e-4 if schedule == "cosine" else 2e-3
    for step, expected in ((0, 0.0), (50, 1e-3), (100, 2e-3), (500, end)):
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_each_precision_policy_trains(policy):
    images = np.random.default_rng(0).random((32, 16, 16, 3), dtype=np.float32)
    with vae.dtype_policy(policy):
        keras.utils.set_random_seed(0)
        model = vae.model_from_config(
            {"image_size": 16, "channels": 3, "latent_dim": 8, "filters": [8, 16], "hidden_units": 16,
             "upsampling": "nearest", "reconstruction": "mse", "beta": 1.0, "beta_warmup_steps": 0,
             "beta_cycle_steps": 0, "model": "vae", "seed": 0}
        )  # fmt: skip
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
        # Keras wraps the optimizer for float16, and train_step must apply its loss scale.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
        losses = model.fit(images, epochs=6, batch_size=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0]
    assert model.decoder(np.zeros((1, 8), np.float32)).dtype == "float32"  # outputs stay float32
