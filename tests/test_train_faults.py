"""train.py's refusals and faults: bad flags, --resume with other flags, the run folder (lock,
what may be trained into, debris of killed runs), a full disk, damaged checkpoints and edited
configs, and a memory cache that would not fit. Each is one line, a non-zero exit, and no
existing file touched."""

from __future__ import annotations

import errno
import fcntl
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, tiny_train_args

import data
import runs
import train
import train_cli
import vae

BAD_FLAGS = [
    (["--beta", "nan"], "--beta must be a finite number"),
    (["--beta", "-1"], "--beta must be 0 or more"),
    (["--limit", "-1"], "--limit is a number of images, 0 .all. or more"),
    (["--crop", "-5"], "--crop is a side in pixels of the 178-pixel wide CelebA frame"),
    (["--crop", "500"], "--crop is a side in pixels"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--ema", "nan"], "--ema must be a finite number"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "-8"], "--batch-size must be at least 1"),
    (["--hidden", "0"], "--hidden must be at least 1"),
    (["--beta-warmup", "-1"], "--beta-warmup is a number of steps, 0 or more"),
    (["--seed", "-1"], "--seed must be in \\[0, 2\\^32\\)"),
    (["--image-size", "-16"], "image size -16 must be a multiple of 2\\^2"),
    (["--worker-start-timeout", "0"], "--worker-start-timeout is a number of seconds above 0"),
    (["--worker-start-timeout", "nan"], "--worker-start-timeout is a number of seconds above 0"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_FLAGS)
def test_bad_numbers_are_refused_before_anything_is_written(face_folder, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=f"^error: {message}"):
        train.main(tiny_train_args(face_folder, tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


def run_script(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("argv", "expected"), [(["--help"], "usage: train.py"), (["--beta", "nan"], "error: --beta")])
def test_help_and_bad_flags_answer_without_importing_tensorflow(face_folder, tmp_path, argv, expected):
    """`python train.py ...` as the shell runs it (runpy, as __main__), then a look at sys.modules."""
    argv = ["train.py", *argv] if argv == ["--help"] else ["train.py", "--data", str(face_folder), *argv]
    result = run_script(
        "import runpy, sys, time\n"
        f"sys.argv = {argv!r}\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    print('EXIT', exit.code, file=sys.stderr)\n"
        "print('TENSORFLOW', 'tensorflow' in sys.modules or 'keras' in sys.modules)\n"
        "print('SECONDS', time.perf_counter() - start)\n"
    )
    assert "TENSORFLOW False" in result.stdout, result.stdout + result.stderr
    assert expected in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert float(result.stdout.rsplit("SECONDS", 1)[1]) < 5  # no TensorFlow start-up: well under a second when idle


def test_resume_refuses_flags_it_would_ignore(tmp_path):
    """Given flags are detected even when they repeat the default (0.25 is --beta's)."""
    with pytest.raises(SystemExit, match="so --batch-size, --beta, --latent, --lr would be ignored: drop them"):
        train.main(["--resume", str(tmp_path), "--latent", "64", "--lr", "0.5", "--batch-size", "16", "--beta", "0.25"])
    with pytest.raises(SystemExit, match="so --out would be ignored: drop it"):
        train.main(["--resume", str(tmp_path), "--out", str(tmp_path / "elsewhere"), "--epochs", "3", "--verbose", "0"])
    with pytest.raises(SystemExit) as refused:  # no run there, but the flags themselves go with --resume
        train.main(["--resume", str(tmp_path), "--backup-every", "5", "--no-tensorboard", "--cache", "none"])
    assert "would be ignored" not in str(refused.value)


def test_settings_of_a_resumed_run_are_checked_too(tmp_path):
    config = {"format": runs.RUN_FORMAT, "data": "x", "limit": 0, "cache": "memory", "crop": 148, "train_split": "train",
              **vae.DEFAULT_RECIPE, "beta": -1.0, "mixed_precision": False, "strategy": "auto"}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=f"'beta' in {tmp_path / 'config.json'} must be 0 or more"):
        train.main(["--resume", str(tmp_path)])
    del config["image_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="config.json: image_size is missing; restore the config.json train.py wrote"):
        train.main(["--resume", str(tmp_path)])


@pytest.fixture(scope="module")
def trained_run(kaggle_celeba, tmp_path_factory) -> Path:
    """A tiny run that trained one epoch; tests copy it before changing anything."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train.main(tiny_train_args(kaggle_celeba, run, "--epochs", "1"))
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_run_folder_checks(trained_run, face_folder, tmp_path):
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "config.json").write_text(json.dumps({"format": runs.RUN_FORMAT}))
    (exported / "decoder.onnx").write_bytes(b"onnx")
    cases = [
        (trained_run, "already holds a run; use --resume"),
        (exported, "holds an exported model .config.json, decoder.onnx.; give a new or empty --out"),
        (face_folder, "is not empty .face000.png, face001.png, .*and holds no run to resume"),
        (face_folder / "face000.png", "--out .*face000.png is a file, not a folder"),
        (face_folder / "face000.png" / "run", "cannot be created: .*face000.png is a file"),
    ]
    for out, message in cases:
        before = sorted(p.stat().st_mtime_ns for p in out.rglob("*")) if out.is_dir() else None
        with pytest.raises(SystemExit, match=message):
            train.main(tiny_train_args(face_folder, out))
        if out.is_dir():
            assert sorted(p.stat().st_mtime_ns for p in out.rglob("*")) == before  # nothing touched
    (exported / "decoder.onnx").unlink()  # config.json without a checkpoint: a run killed in its first epoch
    with pytest.raises(SystemExit, match="holds a run that stopped before its first checkpoint; delete it"):
        train.main(tiny_train_args(face_folder, exported))
    for cache in (face_folder / "face000.png", face_folder / "face000.png" / "cache"):
        with pytest.raises(SystemExit, match="--cache .*face000.png"):
            train.main(tiny_train_args(face_folder, tmp_path / "new" / "run", "--cache", str(cache)))
        assert not (tmp_path / "new").exists()  # the run folder made for the checks is gone again


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_unwritable_folders_are_refused(face_folder, tmp_path):
    cannot = Path("/proc/celeba-vae-test/run")  # /proc takes no new folders, not even from root
    with pytest.raises(
        SystemExit, match=f"^error: (cannot write the run folder {cannot}|--out {cannot}: /proc is not)"
    ):
        train.main(tiny_train_args(face_folder, cannot))
    with pytest.raises(SystemExit, match=f"^error: --cache {cannot}(: cannot write there|: /proc is not writable)"):
        train.main(tiny_train_args(face_folder, tmp_path / "run", "--cache", str(cannot)))
    assert not (tmp_path / "run").exists()


def test_a_second_training_on_the_same_folder_is_refused(face_folder, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nimport train_cli\n"
         f"with train_cli.locked_run_folder(Path({str(run)!r}), {{}}, resume=False):\n"
         "    print('locked', flush=True)\n    time.sleep(60)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        second = subprocess.run(
            [sys.executable, "train.py", *tiny_train_args(face_folder, run)], cwd=REPO, capture_output=True, text=True
        )
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"error: {run} is in use by another training (pid {holder.pid}); wait for it to end, or give another --out"
        )
        assert time.perf_counter() - start < 30  # refused before TensorFlow or the data are loaded
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the first run's folder is untouched
    # the lock goes with its process, also when killed: the folder is usable again
    with open(run / train_cli.LOCK_FILE) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_temporary_files_of_a_killed_run_are_removed_on_resume(trained_run, tmp_path, capsys):
    run = copy_of(trained_run, tmp_path)
    debris = [
        run / "checkpoint" / ".partial.weights.h5",
        run / ".encoder.partial.keras",
        run / ".history.csv.0f3e2d1c.tmp",
        run / "samples" / ".epoch_002.png.a1b2c3d4.tmp",
        run / "checkpoint" / "backup" / "checkpoint.tmp0123456789abcdef0123456789abcdef",
        run / "checkpoint" / "backup" / "ckpt-4_temp",  # a step backup being written: a folder
    ]
    (run / "checkpoint" / "backup").mkdir()
    for path in debris[:-1]:
        path.write_bytes(b"half-written")
    debris[-1].mkdir()
    (debris[-1] / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half-written")
    (run / ".gitignore").write_text("*\n")  # not train.py's: stays
    train.main(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert f"removed 6 temporary file(s) an interrupted run left in {run}" in capsys.readouterr().out
    assert not any(path.exists() for path in debris)
    assert (run / ".gitignore").exists() and train.latest_checkpoint(run)[0] == 2


def test_a_full_disk_keeps_the_last_checkpoint_and_says_what_a_checkpoint_needs(trained_run, tmp_path, monkeypatch):
    run = copy_of(trained_run, tmp_path)
    kept = run / "checkpoint" / "epoch_001.weights.h5"
    kept_bytes = kept.read_bytes()

    def disk_fills_up(self, path, **kwargs):
        Path(path).write_bytes(b"\0" * 4096)  # the part written before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vae.VAE, "save_weights", disk_fills_up)
    message = (
        f"^error: the disk is full in {run}: a checkpoint takes {len(kept_bytes) / 1e6:.1f} MB and encoder.keras "
        f"with decoder.keras about [0-9.]+ MB; free that much space, then continue from the last good checkpoint "
        f"\\(epoch 1\\) with: python train.py --resume {run}$"
    )
    with pytest.raises(SystemExit, match=message):
        train.main(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["epoch_001.weights.h5"]
    assert kept.read_bytes() == kept_bytes
    monkeypatch.undo()
    train.main(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert train.latest_checkpoint(run)[0] == 2


def test_damaged_checkpoint_and_edited_config_are_one_line_each(trained_run, tmp_path):
    run = copy_of(trained_run, tmp_path)
    checkpoint = run / "checkpoint" / "epoch_001.weights.h5"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[: len(good) // 2])
    with pytest.raises(SystemExit, match=f"^error: checkpoint {checkpoint} is damaged .*truncated file.*; put back"):
        train.main(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    checkpoint.write_bytes(good)
    config = json.loads((run / "config.json").read_text())
    for edit in ({"latent_dim": 16}, {"ema": 0.5}):  # new weight shapes; an optimizer with EMA variables
        (run / "config.json").write_text(json.dumps({**config, **edit}))
        with pytest.raises(
            SystemExit, match="does not fit the model its config.json describes .*was config.json edited"
        ):
            train.main(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert checkpoint.read_bytes() == good and train.latest_checkpoint(run)[0] == 1


def test_a_memory_cache_that_would_not_fit_stops_before_training(face_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "available_memory", lambda: 40_000)
    run = tmp_path / "run"
    # the ~58 training and validation faces at 16x16x3 are ~45 kB of pixels: more than 3/4 of 40 kB
    with pytest.raises(SystemExit, match="^error: caching [0-9]+ decoded 16x16 images in memory takes about [45][0-9] kB, "
                       "but only 40 kB is available; cache them in files instead with --cache DIR"):  # fmt: skip
        train.main(tiny_train_args(face_folder, run))
    assert not run.exists()
    train.main(tiny_train_args(face_folder, run, "--cache", str(tmp_path / "cache"), "--epochs", "1"))
    assert train.latest_checkpoint(run)[0] == 1 and list((tmp_path / "cache").glob("*.index"))
