"""Step-level recovery: step backups survive kill -9, SIGTERM and a write cut short, and a run
resumed from one ends where an uninterrupted run does."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import REPO, tiny_train_args
from tensorflow.python.checkpoint import checkpoint_management
from tensorflow.python.ops import gen_io_ops

import epoch_log
import recovery
import runs
import train
import train_cli
import vae
from train_cli import RunError

pytestmark = pytest.mark.slow  # trains models end to end

# Batch 2 over 24 training faces of `face_folder`: 12 steps an epoch, a backup every 2 steps.
FLAGS = ("--limit", "24", "--batch-size", "2", "--backup-every", "2",
         "--lr-schedule", "constant", "--seed", "3", "--ema", "0.5")  # fmt: skip


def history_epochs(run: Path) -> list[int]:
    with open(run / "history.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def steps_per_epoch(run: Path) -> int:
    return len(train.load_splits(runs.read_config(run))[0]) // 2


def final_state(run: Path) -> tuple[int, int]:
    """(completed epochs, optimizer iterations) from the newest epoch checkpoint."""
    config = runs.read_config(run)
    epochs, path = train_cli.latest_checkpoint(run)
    model = vae.model_from_config(config)
    model.compile(optimizer=vae.make_optimizer(config))
    model.optimizer.build(model.trained_variables())
    model.load_weights(path)
    return epochs, int(model.optimizer.iterations.numpy())


def start_training(data: Path, run: Path) -> subprocess.Popen:
    """train.py in a subprocess, for many epochs, once its first step backup exists."""
    command = [sys.executable, str(REPO / "train.py"), *tiny_train_args(data, run, "--epochs", "500", *FLAGS)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    index_file = run / runs.CHECKPOINT_DIR / runs.BACKUP_DIR / "checkpoint"
    deadline = time.time() + 120
    while not index_file.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    if not index_file.exists():
        process.kill()
        pytest.fail(f"no step backup appeared: {process.communicate()[1][-2000:]}")
    return process


def test_killed_run_resumes_from_its_step_backup_and_ends_as_an_uninterrupted_run(face_folder, tmp_path, capsys):
    run = tmp_path / "killed"
    process = start_training(face_folder, run)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    # Killed in the first epoch, after the backup of an even step k.
    steps = steps_per_epoch(run)
    assert train_cli.latest_checkpoint(run) is None
    epochs_done, step, _ = recovery.latest_backup(run)
    assert epochs_done == 0 and 2 <= step < steps and step % 2 == 0

    train.train_command(["--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert f"resuming {run} in epoch 1 after step {step} of {steps} (optimizer step {step}," in capsys.readouterr().out
    assert final_state(run) == (2, 2 * steps)  # the resumed epoch trained only its remaining steps
    assert history_epochs(run) == [1, 2]
    assert not (run / runs.CHECKPOINT_DIR / runs.BACKUP_DIR).exists()  # removed at the end, as on a straight run

    # Same data order, sampling noise, optimizer and EMA state, and running metrics after the
    # resume: the weights and the history of a run that was never interrupted.
    straight = tmp_path / "straight"
    train.train_command(tiny_train_args(face_folder, straight, "--epochs", "2", *FLAGS))
    for name in ("decoder.keras", "encoder.keras"):
        weights = [keras.saving.load_model(folder / name, safe_mode=True).get_weights() for folder in (straight, run)]
        for a, b in zip(*weights, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    rows = [epoch_log.read_history(folder / "history.csv") for folder in (straight, run)]
    for expected, resumed in zip(*rows, strict=True):
        for column in epoch_log.TIMING_COLUMNS:
            del expected[column], resumed[column]
        assert resumed == pytest.approx(expected, rel=1e-5)


def test_sigterm_backs_up_the_current_step_and_says_how_to_resume(face_folder, tmp_path, capsys):
    run = tmp_path / "run"
    process = start_training(face_folder, run)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("stopped by SIGTERM in epoch 1 after step ")
    assert message.endswith(f"state saved in {run}; continue with: {sys.executable} train.py --resume {run}")
    assert "Traceback" not in stderr
    step = int(message.split("after step ")[1].split()[0])
    assert recovery.latest_backup(run)[:2] == (0, step)  # the step it stopped after, not an older backup

    train.train_command(["--resume", str(run), "--epochs", "1", "--verbose", "0"])
    assert f"after step {step} of {steps_per_epoch(run)} (optimizer step {step}," in capsys.readouterr().out
    assert final_state(run) == (1, steps_per_epoch(run))
    assert history_epochs(run) == [1]


def test_ctrl_c_backs_up_the_current_step_and_a_second_one_stops_at_once(face_folder, tmp_path):
    run = tmp_path / "run"
    process = start_training(face_folder, run)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT and "Traceback" not in stderr
    acknowledged, message = stderr.strip().splitlines()[-2:]
    assert acknowledged == "Ctrl-C: stopping after this step, once it is backed up (Ctrl-C again stops at once)"
    assert message.startswith("stopped by Ctrl-C in epoch 1 after step ")
    assert message.endswith(f"state saved in {run}; continue with: {sys.executable} train.py --resume {run}")
    step = int(message.split("after step ")[1].split()[0])
    assert recovery.latest_backup(run)[:2] == (0, step)

    # The second Ctrl-C, sent once the first was handled, ends the process at once; a real run
    # may have finished its step and backup by then, so the handler is tried on its own.
    script = (
        "import os, signal, sys, time\nfrom pathlib import Path\nimport train, recovery\n"
        f"with recovery.StopRequest(Path({str(run)!r})).installed():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(0.2)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(60)\n"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 128 + signal.SIGINT and "Traceback" not in result.stderr
    assert time.monotonic() - started < 50  # not the minute of sleep
    assert result.stderr.strip().splitlines()[-1] == (
        f"stopped at once by a second Ctrl-C; {run} keeps its last backup or checkpoint; "
        f"continue with: {sys.executable} train.py --resume {run}"
    )


class SimulatedKill(BaseException):
    """Ends the process's work mid-write, like a kill; nothing in train.py catches it."""


@pytest.mark.parametrize(
    ("module", "function"),
    [
        (gen_io_ops, "merge_v2_checkpoints"),  # the new backup's files are still in their temporary folder
        (checkpoint_management, "update_checkpoint_state_internal"),  # renamed, but not yet the current one
    ],
)
def test_a_backup_write_cut_short_leaves_the_previous_backup_usable(
    face_folder, tmp_path, monkeypatch, module, function
):
    run = tmp_path / "run"
    real = getattr(module, function)
    calls = []

    def cut_short_the_second_backup(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise SimulatedKill
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, cut_short_the_second_backup)
    with pytest.raises(SimulatedKill):
        train.train_command(tiny_train_args(face_folder, run, "--epochs", "1", *FLAGS))
    monkeypatch.undo()
    backup_folder = run / runs.CHECKPOINT_DIR / runs.BACKUP_DIR
    assert {path.name for path in backup_folder.iterdir()} > {"checkpoint", "ckpt-2.index"}  # leftovers of step 4
    assert recovery.latest_backup(run)[:2] == (0, 2)

    train.train_command(["--resume", str(run), "--verbose", "0"])
    assert final_state(run) == (1, steps_per_epoch(run))
    assert history_epochs(run) == [1]
    assert not backup_folder.exists()


def test_backup_flags(face_folder, tmp_path):
    with pytest.raises(RunError, match="--backup-every is a number of steps, 0 or more"):
        train.train_command(tiny_train_args(face_folder, tmp_path / "run", "--backup-every", "-1"))
    assert not (tmp_path / "run").exists()
