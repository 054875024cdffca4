"""train.py's refusals and faults: bad flags, --resume with other flags, the run folder (lock,
what may be trained into, debris of killed runs), a full disk, damaged checkpoints and edited
configs, a memory or file cache that would not fit, and a cache disk that fills up while
training. Each is one line, a non-zero exit, and no existing file touched."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, tiny_train_args, write_faces

import data
import recovery
import runs
import train
import train_cli
import vae
from train_cli import RunError

pytestmark = pytest.mark.slow  # trains models end to end

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
    with pytest.raises(RunError, match=f"^{message}"):
        train.train_command(tiny_train_args(face_folder, tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


def test_a_face_folder_without_validation_images_says_to_add_some(tmp_path):
    faces = tmp_path / "faces"
    write_faces(faces, ["face2.png", "face3.png", "face5.png"])  # all three hash into the training split
    with pytest.raises(
        RunError, match="validation 0, .*: need at least one training and one validation image; add images: "
    ):
        train.train_command(tiny_train_args(faces, tmp_path / "run"))
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
    with pytest.raises(RunError, match="so --batch-size, --beta, --latent, --lr would be ignored: drop them"):
        train.train_command(
            ["--resume", str(tmp_path), "--latent", "64", "--lr", "0.5", "--batch-size", "16", "--beta", "0.25"]
        )
    with pytest.raises(RunError, match="so --out would be ignored: drop it"):
        train.train_command(
            ["--resume", str(tmp_path), "--out", str(tmp_path / "elsewhere"), "--epochs", "3", "--verbose", "0"]
        )
    with pytest.raises(RunError) as refused:  # no run there, but the flags themselves go with --resume
        train.train_command(["--resume", str(tmp_path), "--backup-every", "5", "--no-tensorboard", "--cache", "none"])
    assert "would be ignored" not in str(refused.value)


def test_settings_of_a_resumed_run_are_checked_too(tmp_path):
    config = {"format": runs.RUN_FORMAT, "data": "x", "limit": 0, "cache": "memory", "crop": 148, "train_split": "train",
              **vae.DEFAULT_RECIPE, "beta": -1.0, "mixed_precision": False, "strategy": "auto"}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match=f"'beta' in {tmp_path / 'config.json'} must be 0 or more"):
        train.train_command(["--resume", str(tmp_path)])
    del config["image_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="config.json: image_size is missing; restore the config.json train.py wrote"):
        train.train_command(["--resume", str(tmp_path)])


@pytest.fixture(scope="module")
def trained_run(kaggle_celeba, tmp_path_factory) -> Path:
    """A tiny run that trained one epoch; tests copy it before changing anything."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train.train_command(tiny_train_args(kaggle_celeba, run, "--epochs", "1"))
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
        (face_folder / "face000.png", "--out .*face000.png is a file; give a folder path"),
        (face_folder / "face000.png" / "run", "lies below .*face000.png, which is a file"),
    ]
    for out, message in cases:
        before = sorted(p.stat().st_mtime_ns for p in out.rglob("*")) if out.is_dir() else None
        with pytest.raises(RunError, match=message):
            train.train_command(tiny_train_args(face_folder, out))
        if out.is_dir():
            assert sorted(p.stat().st_mtime_ns for p in out.rglob("*")) == before  # nothing touched
    (exported / "decoder.onnx").unlink()  # config.json without a checkpoint: a run killed in its first epoch
    with pytest.raises(RunError, match="holds a run that stopped before its first checkpoint; delete it"):
        train.train_command(tiny_train_args(face_folder, exported))
    for cache in (face_folder / "face000.png", face_folder / "face000.png" / "cache"):
        with pytest.raises(RunError, match="--cache .*face000.png"):
            train.train_command(tiny_train_args(face_folder, tmp_path / "new" / "run", "--cache", str(cache)))
        assert not (tmp_path / "new").exists()  # the run folder made for the checks is gone again


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_unwritable_folders_are_refused(face_folder, tmp_path):
    cannot = Path("/proc/celeba-vae-test/run")  # /proc takes no new folders, not even from root
    for flag, argv in (
        ("--out", tiny_train_args(face_folder, cannot)),
        ("--cache", tiny_train_args(face_folder, tmp_path / "run", "--cache", str(cannot))),
    ):
        with pytest.raises(
            RunError,
            match=f"^{flag} {cannot}: (/proc is not writable .permission denied.|cannot write in /proc .*); "
            f"give another {flag}$",
        ):
            train.train_command(argv)
    assert not (tmp_path / "run").exists()


def test_read_only_out_is_refused(trained_run, face_folder, tmp_path):
    """A folder without write permission, as a user meets it. Root may write anywhere, so as root
    the scripts run without the capabilities that override file permissions (setpriv)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    scripts = {
        "train.py": ["--data", str(face_folder), "--out", str(locked / "run")],
        "train.py --cache": ["--data", str(face_folder), "--out", str(tmp_path / "run"), "--cache", str(locked / "c")],
        "export_onnx.py": ["--run", str(trained_run), "--out", str(locked / "exported")],
        "generate.py": ["--run", str(trained_run), "--mode", "sample", "--out", str(locked / "grid.png")],
        "evaluate.py": ["--run", str(trained_run), "--data", str(face_folder), "--out", str(locked / "eval.json")],
    }
    as_user = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux) to drop the permission override")
        as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    for name, argv in scripts.items():
        flag = "--cache" if "--cache" in name else "--out"
        result = subprocess.run(
            [*as_user, sys.executable, name.split()[0], *argv], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 1, (name, result.stderr)
        assert result.stderr.strip().splitlines() == [
            f"error: {flag} {argv[argv.index(flag) + 1]}: {locked} is not writable (permission denied); "
            f"give another {flag}"
        ], name
    assert list(locked.iterdir()) == [] and not (tmp_path / "run").exists()


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
    train.train_command(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert f"removed 6 temporary file(s) an interrupted run left in {run}" in capsys.readouterr().out
    assert not any(path.exists() for path in debris)
    assert (run / ".gitignore").exists() and train_cli.latest_checkpoint(run)[0] == 2


def test_a_full_disk_keeps_the_last_checkpoint_and_says_what_a_checkpoint_needs(trained_run, tmp_path, monkeypatch):
    run = copy_of(trained_run, tmp_path)
    kept = run / "checkpoint" / "epoch_001.weights.h5"
    kept_bytes = kept.read_bytes()

    def disk_fills_up(self, path, **kwargs):
        Path(path).write_bytes(b"\0" * 4096)  # the part written before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vae.VAE, "save_weights", disk_fills_up)
    message = (
        f"^the disk is full in {run}: a checkpoint takes {len(kept_bytes) / 1e6:.1f} MB and encoder.keras "
        f"with decoder.keras about [0-9.]+ MB; free that much space, then continue from the last good checkpoint "
        f"\\(epoch 1\\) with: {re.escape(recovery.resume_command(run))}$"
    )
    with pytest.raises(RunError, match=message):
        train.train_command(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["epoch_001.weights.h5"]
    assert kept.read_bytes() == kept_bytes
    monkeypatch.undo()
    train.train_command(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert train_cli.latest_checkpoint(run)[0] == 2


def test_a_full_disk_before_the_first_checkpoint_points_to_the_step_backup(kaggle_celeba, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def disk_fills_up(self, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vae.VAE, "save_weights", disk_fills_up)  # the end-of-epoch checkpoint
    with pytest.raises(
        RunError, match=f"then continue from the last step backup with: {re.escape(recovery.resume_command(run))}$"
    ):
        train.train_command(tiny_train_args(kaggle_celeba, run, "--epochs", "1", "--backup-every", "2"))
    monkeypatch.undo()
    train.train_command(["--resume", str(run), "--verbose", "0"])
    assert train_cli.latest_checkpoint(run)[0] == 1


def test_damaged_checkpoint_and_edited_config_are_one_line_each(trained_run, tmp_path):
    run = copy_of(trained_run, tmp_path)
    checkpoint = run / "checkpoint" / "epoch_001.weights.h5"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[: len(good) // 2])
    config_text = (run / "config.json").read_text()
    with pytest.raises(RunError, match=f"^checkpoint {checkpoint} is damaged .*truncated file.*; put back"):
        train.train_command(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert (run / "config.json").read_text() == config_text  # not rewritten with epochs 2 by a refused resume
    checkpoint.write_bytes(good)
    config = json.loads(config_text)
    # New weight shapes; an optimizer with EMA variables where the checkpoint has none, or the reverse.
    for edit in ({"latent_dim": 16}, {"ema": 0.0 if config["ema"] else 0.5}):
        edited = json.dumps({**config, **edit})
        (run / "config.json").write_text(edited)
        with pytest.raises(RunError, match="does not fit the model its config.json describes .*was config.json edited"):
            train.train_command(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
        assert (run / "config.json").read_text() == edited
    assert checkpoint.read_bytes() == good and train_cli.latest_checkpoint(run)[0] == 1


def test_a_memory_cache_that_would_not_fit_stops_before_training(face_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "available_memory", lambda: 40_000)
    run = tmp_path / "run"
    # the ~58 training and validation faces at 16x16x3 are ~45 kB of pixels: more than 3/4 of 40 kB
    with pytest.raises(RunError, match="^caching [0-9]+ decoded 16x16 images in memory takes about [45][0-9] kB, "
                       "but only 40 kB is available; cache them in files instead with --cache DIR"):  # fmt: skip
        train.train_command(tiny_train_args(face_folder, run))
    assert not run.exists()
    monkeypatch.setattr(data, "available_memory", lambda: 100_000_000)  # enough for the model, not the cache
    train.train_command(tiny_train_args(face_folder, run, "--cache", str(tmp_path / "cache"), "--epochs", "1"))
    assert train_cli.latest_checkpoint(run)[0] == 1 and list((tmp_path / "cache").glob("*.index"))


@pytest.mark.parametrize(
    ("flags", "figures", "change"),
    [
        # the density fit after training: a 100000 x 100000 float64 covariance (80 GB)
        (("--latent", "100000"), r"\(2[0-9]{2}\.[0-9] GB latent density fit after training, ", "--latent$"),
        # the feature maps of a batch of 8 images of 4096 x 4096
        (
            ("--image-size", "4096"),
            r"[0-9.]+ GB activations of a batch of 8 at 4096x4096, ",
            "--batch-size or --image-size",
        ),
    ],
)
def test_a_run_that_cannot_fit_in_memory_stops_before_training(
    face_folder, tmp_path, monkeypatch, flags, figures, change
):
    monkeypatch.setattr(data, "available_memory", lambda: 16 * 2**30)  # the same on any machine
    monkeypatch.setattr(vae, "model_from_config", lambda config: pytest.fail("the model was built"))
    with pytest.raises(RunError) as exit_info:
        train.train_command(tiny_train_args(face_folder, tmp_path / "run", *flags))
    message = str(exit_info.value)
    assert message.startswith("this run needs about ") and "of memory and 17.2 GB is available (" in message
    assert re.search(figures, message) and re.search(f"; make it smaller with .*{change}", message), message
    assert not (tmp_path / "run").exists()


def test_a_file_cache_that_would_not_fit_stops_before_training(face_folder, tmp_path, monkeypatch):
    run, cache = tmp_path / "new" / "run", tmp_path / "new" / "cache"  # a new folder for both
    monkeypatch.setattr(data, "free_disk_space", lambda folder: 40_000)
    # the ~56 training and validation faces at 16x16x3: ~47 kB of cache files, and 2 x 16 kB of their last blocks
    with pytest.raises(RunError, match=f"^caching 5[0-9] decoded 16x16 images in files under {cache} takes "
                       "about [78][0-9] kB, but only 40 kB is free there; free some space, give another --cache folder, "
                       "use --cache memory \\(about [45][0-9] kB, which fits in memory\\), use --cache none, or train on "
                       "fewer images \\(--limit\\)$"):  # fmt: skip
        train.train_command(tiny_train_args(face_folder, run, "--cache", str(cache)))
    assert not (tmp_path / "new").exists()  # neither the run folder nor the cache folder made for the checks
    monkeypatch.setattr(data, "available_memory", lambda: 40_000)
    with pytest.raises(RunError, match="is free there; free some space, give another --cache folder, use --cache none"):
        train.train_command(tiny_train_args(face_folder, run, "--cache", str(cache)))  # no memory to offer either
    monkeypatch.undo()
    train.train_command(tiny_train_args(face_folder, run, "--cache", str(cache), "--epochs", "1"))
    assert len(list(cache.glob("*.index"))) == 2 and not list(cache.glob("*lockfile"))
    # Complete caches are reused and need no space: another run on the same data goes ahead on a full disk.
    monkeypatch.setattr(data, "free_disk_space", lambda folder: 0)
    train.train_command(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert train_cli.latest_checkpoint(run)[0] == 2


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A folder on a 128 kB tmpfs of its own, unmounted afterwards (mounting needs root)."""
    folder = tmp_path / "tiny_disk"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small tmpfs with")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        # --lazy: unmounted even if this process still holds a file there open (freed when closed)
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_cache_disk_that_fills_up_during_training_stops_with_one_line(face_folder, tmp_path, tiny_disk):
    """For real: the file cache goes to a 128 kB tmpfs that has room for it when training starts, so
    the check before training passes; then another process fills the disk up to its last 8 kB."""
    run = tmp_path / "run"
    args = tiny_train_args(face_folder, run, "--cache", str(tiny_disk), "--epochs", "1")
    filled = run_script(
        "from pathlib import Path\nimport data, train\ncheck = data.check_file_cache\n"
        "def check_then_fill(cache, *args):\n"
        "    check(cache, *args)\n"
        "    Path(cache, 'other.bin').write_bytes(bytes(data.free_disk_space(cache) - 8192))\n"
        f"data.check_file_cache = check_then_fill\ntrain.main({args!r})\n"
    )
    assert filled.returncode == 1 and "Traceback" not in filled.stderr, filled.stderr
    errors = [line for line in filled.stderr.splitlines() if line.startswith("error:")]
    assert filled.stderr.rstrip().endswith(errors[0]) and len(errors) == 1
    assert re.fullmatch(
        f"error: the disk of --cache {tiny_disk} filled up while the decoded images were cached there \\(the "
        "unfinished cache files are removed\\): the cache needs about [78][0-9] kB and 8 kB is free; free space there or "
        f"give another --cache folder, then delete {run} and start again \\(nothing had been saved yet\\)",
        errors[0],
    )
    assert [path.name for path in tiny_disk.iterdir()] == ["other.bin"]  # no half-written cache left
    (tiny_disk / "other.bin").unlink()  # space freed: the advice works
    shutil.rmtree(run)
    train.train_command(args)
    assert train_cli.latest_checkpoint(run)[0] == 1 and len(list(tiny_disk.glob("*.index"))) == 2


def test_a_full_cache_disk_after_a_checkpoint_says_to_resume(trained_run, tmp_path):
    """What a full disk left of a cache whose index TensorFlow was merging (an empty index and the
    lock files) is removed, and a run with a checkpoint is told to resume."""
    cache = tmp_path / "cache"
    cache.mkdir()
    config = json.loads((trained_run / "config.json").read_text())
    train_files, validation_files, _ = train.load_splits(config)
    prefix = data.file_cache_prefix(str(cache), train_files, config["image_size"], config["channels"], config["crop"])
    debris = [Path(f"{prefix}{end}") for end in (".index", ".data-00000-of-00001", "_0.index", "_0.lockfile")]
    for path in debris:
        path.write_bytes(b"")
    assert not data.file_cache_is_complete(prefix)
    error = recovery.file_cache_full_error(str(cache), [train_files, validation_files], config, trained_run)
    assert re.fullmatch(
        f"the disk of --cache {cache} filled up .*: the cache needs about [0-9]+ kB and [0-9.]+ [kMG]B is free; "
        f"free space there or give another --cache folder, then continue from the last good checkpoint \\(epoch 1\\) "
        f"with: {re.escape(recovery.resume_command(trained_run))}",
        str(error),
    )
    assert not any(path.exists() for path in debris)
