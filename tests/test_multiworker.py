"""A real multi-worker run: two train.py processes on 127.0.0.1, MultiWorkerMirroredStrategy on CPU.

Each worker is a separate process with its own TF_CONFIG, as on two machines. They get different
--out folders, as two machines without shared storage would, so that what each one writes shows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import REPO, tiny_train_args
from test_recovery import final_state

import cluster
import epoch_log
import recovery
import runs
import train
import train_cli
from train_cli import RunError

pytestmark = pytest.mark.slow  # trains models end to end

START_TIMEOUT = 240  # seconds for both workers to import TensorFlow, connect and train a few steps
# A lost worker must stop the other one within this time; TensorFlow's coordination service
# declares a task dead after 10 s without heartbeats, the rest is the step in flight.
LOST_WORKER_TIMEOUT = 120
# SIGTERM to one worker must stop both within this time: the step in flight, one more, a backup.
SIGTERM_TIMEOUT = 60
# A worker alone must give up within this time of its start with --worker-start-timeout 3: its
# start-up (TensorFlow's import, 5-10 s on a loaded 2-core machine), 3 s, and the 5 s a worker
# that cannot reach the coordination service adds.
ALONE_TIMEOUT = 90
# |a - b| / |b| over all weights of two runs: float32 sums in another order, amplified by Adam
# where gradients are near zero, gave 4e-6; training on wrongly shuffled or sharded images, 5e-2.
WEIGHT_TOLERANCE = 1e-4


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_worker(data: Path, out: Path, tmp_path: Path, cluster: dict, index: int, *extra: str) -> subprocess.Popen:
    """train.py as worker `index` of `cluster`, with its own TMPDIR tmp_path/tmp<index> and its
    output in tmp_path/worker<index>.log."""
    scratch = tmp_path / f"tmp{index}"
    scratch.mkdir()
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TMPDIR": str(scratch),
        "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
    }
    args = tiny_train_args(data, out, "--strategy", "multiworker", *extra)
    with open(tmp_path / f"worker{index}.log", "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def cluster_of(workers: int) -> dict:
    return {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}


def start_workers(data: Path, outs: list[Path], tmp_path: Path, *extra: str) -> list[subprocess.Popen]:
    """One train.py process per --out folder, worker i of one cluster."""
    cluster = cluster_of(len(outs))
    return [start_worker(data, out, tmp_path, cluster, index, *extra) for index, out in enumerate(outs)]


def stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def log_of(tmp_path: Path, index: int) -> str:
    return (tmp_path / f"worker{index}.log").read_text()


def last_line(tmp_path: Path, index: int) -> str:
    return log_of(tmp_path, index).strip().splitlines()[-1]


def weights(run: Path) -> np.ndarray:
    """The saved encoder and decoder weights of a run, flattened into one vector."""
    models = [keras.saving.load_model(run / f"{part}.keras", safe_mode=True) for part in ("encoder", "decoder")]
    return np.concatenate([w.ravel() for model in models for w in model.get_weights()])


def relative_difference(run: Path, reference: Path) -> float:
    difference = np.linalg.norm(weights(run) - weights(reference))
    return float(difference / np.linalg.norm(weights(reference)))


def history(run: Path) -> list[dict]:
    return epoch_log.read_history(run / "history.csv")


def test_two_workers_train_as_one_process_on_the_global_batch(face_folder, tmp_path):
    chief_run, other_out = tmp_path / "run", tmp_path / "other"
    # global batch 8 (tiny_train_args): 4 images per worker, 6 steps an epoch, 2 epochs; one file
    # cache folder for both, as on shared storage
    cache = tmp_path / "cache"
    workers = start_workers(face_folder, [chief_run, other_out], tmp_path, "--epochs", "2", "--cache", str(cache))
    try:
        for index, worker in enumerate(workers):
            assert worker.wait(timeout=START_TIMEOUT) == 0, log_of(tmp_path, index)[-3000:]
    finally:
        stop(workers)
    assert "done: this worker's share" in log_of(tmp_path, 1)
    # only the chief writes a run folder; the other worker's scratch copy is gone
    assert not other_out.exists()
    assert not list((tmp_path / "tmp1").glob("vae-worker-*"))
    assert sorted(p.name for p in cache.iterdir()) == ["worker0", "worker1"]
    assert {"config.json", "encoder.keras", "decoder.keras", "history.csv", "latent_density.json"} <= {
        p.name for p in chief_run.iterdir()
    }

    single_run = tmp_path / "single"
    train.train_command(tiny_train_args(face_folder, single_run, "--epochs", "2", "--strategy", "none"))
    assert relative_difference(chief_run, single_run) < WEIGHT_TOLERANCE
    for chief_row, single_row in zip(history(chief_run), history(single_run), strict=True):
        assert chief_row.keys() == single_row.keys()
        for key, value in single_row.items():
            if key not in epoch_log.TIMING_COLUMNS:
                assert chief_row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_a_killed_worker_stops_the_other_and_the_run_resumes_alone(face_folder, tmp_path, capsys):
    chief_run = tmp_path / "run"
    # Far more epochs than will run; a constant learning rate, so that --epochs can shrink on resume.
    constant = ("--lr-schedule", "constant")
    workers = start_workers(face_folder, [chief_run, tmp_path / "other"], tmp_path, "--epochs", "500", *constant)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while len(history(chief_run)) < 2:  # a finished epoch (and its checkpoint) before the kill
            assert all(w.poll() is None for w in workers), log_of(tmp_path, 0)[-3000:] + log_of(tmp_path, 1)[-3000:]
            assert time.monotonic() < deadline, "the workers did not finish two epochs in time"
            time.sleep(0.2)
        workers[1].kill()
        returncode = workers[0].wait(timeout=LOST_WORKER_TIMEOUT)
    finally:
        stop(workers)
    assert returncode == 1
    message = last_line(tmp_path, 0)
    assert message.startswith("error: lost another worker of the cluster")
    assert f"--resume {chief_run}" in message and "Traceback" not in log_of(tmp_path, 0)
    assert not (tmp_path / "other").exists()

    # The chief's run continues in this single process. (That it ends where a straight run would
    # follows from the two-worker test above and tests/test_recovery.py's kill -9 and resume.)
    trained = len(history(chief_run))
    capsys.readouterr()
    train.train_command(["--resume", str(chief_run), "--epochs", str(trained + 1), "--verbose", "0"])
    assert "resuming" in capsys.readouterr().out
    assert [row["epoch"] for row in history(chief_run)] == list(range(1, trained + 2))


def test_sigterm_to_one_worker_stops_both_after_a_backup_and_the_run_resumes_alone(face_folder, tmp_path, capsys):
    chief_run, other_out = tmp_path / "run", tmp_path / "other"
    # Global batch 2 (1 image per worker): 26 steps an epoch, a backup every 2 steps.
    flags = ("--batch-size", "2", "--lr-schedule", "constant", "--backup-every", "2")
    workers = start_workers(face_folder, [chief_run, other_out], tmp_path, "--epochs", "500", *flags)
    chief_backup = chief_run / runs.CHECKPOINT_DIR / runs.BACKUP_DIR / "checkpoint"
    other_backup = f"vae-worker-*/{runs.CHECKPOINT_DIR}/{runs.BACKUP_DIR}/checkpoint"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        # Both write step backups: the chief into the run folder, the other worker into its scratch folder.
        while not (chief_backup.exists() and list((tmp_path / "tmp1").glob(other_backup))):
            assert all(w.poll() is None for w in workers), log_of(tmp_path, 0)[-3000:] + log_of(tmp_path, 1)[-3000:]
            assert time.monotonic() < deadline, "the workers wrote no step backup in time"
            time.sleep(0.05)
        workers[1].send_signal(signal.SIGTERM)
        returncodes = [worker.wait(timeout=SIGTERM_TIMEOUT) for worker in workers]
    finally:
        stop(workers)
    assert returncodes == [128 + signal.SIGTERM] * 2, log_of(tmp_path, 0)[-3000:] + log_of(tmp_path, 1)[-3000:]
    # Both stop after the same step (the first one, most likely), and say so.
    resume = re.escape(f"{sys.executable} train.py --resume {chief_run}")
    where = rf"in epoch (\d+) after step (\d+) of 26, state saved in {re.escape(str(chief_run))}; continue with: "
    chief_stop = re.fullmatch(
        rf"stopped by SIGTERM to another worker {where}{resume} --strategy multiworker on every worker, or {resume} alone",
        last_line(tmp_path, 0),
    )
    other_stop = re.fullmatch(
        r"stopped by SIGTERM in epoch (\d+) after step (\d+) of 26, state saved in .*", last_line(tmp_path, 1)
    )
    assert chief_stop and other_stop and chief_stop.groups() == other_stop.groups()
    assert "Traceback" not in log_of(tmp_path, 0) + log_of(tmp_path, 1)
    epoch, step = (int(number) for number in chief_stop.groups())
    assert recovery.latest_backup(chief_run)[:2] == (epoch - 1, step)  # the step they stopped after
    assert not other_out.exists() and not list((tmp_path / "tmp1").glob("vae-worker-*"))

    # The rest of the epoch in this single process, from the chief's backup.
    capsys.readouterr()
    train.train_command(["--resume", str(chief_run), "--epochs", str(epoch), "--verbose", "0"])
    resumed_at = f"in epoch {epoch} after step {step} of 26 (optimizer step {(epoch - 1) * 26 + step},"
    assert f"resuming {chief_run} {resumed_at}" in capsys.readouterr().out
    assert final_state(chief_run) == (epoch, epoch * 26)  # it trained only the steps after the backup


def test_a_worker_alone_gives_up_after_the_start_timeout(face_folder, tmp_path):
    # Worker 0, which runs the coordination service, without worker 1; and worker 1 without worker 0,
    # each in a cluster of its own.
    started = time.monotonic()
    alone = [
        start_worker(
            face_folder, tmp_path / f"run{index}", tmp_path, cluster_of(2), index, "--worker-start-timeout", "3"
        )
        for index in (0, 1)
    ]
    try:
        returncodes = [worker.wait(timeout=ALONE_TIMEOUT) for worker in alone]
    finally:
        stop(alone)
    assert returncodes == [1, 1], log_of(tmp_path, 0)[-3000:] + log_of(tmp_path, 1)[-3000:]
    assert time.monotonic() - started < ALONE_TIMEOUT
    what_to_do = (
        "within --worker-start-timeout 3 s; start train.py on every worker of TF_CONFIG, "
        "each with its own task index, within that time of one another"
    )
    assert re.fullmatch(rf"error: worker 1 \(127\.0\.0\.1:\d+\) did not start {what_to_do}", last_line(tmp_path, 0))
    assert re.fullmatch(
        rf"error: worker 0 \(127\.0\.0\.1:\d+\) could not be reached \(not started, or its port blocked\) {what_to_do}",
        last_line(tmp_path, 1),
    )
    assert "Traceback" not in log_of(tmp_path, 0) + log_of(tmp_path, 1)
    assert not (tmp_path / "run0").exists() and not (tmp_path / "run1").exists()


WORKERS = '"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}'


@pytest.mark.parametrize(
    ("tf_config", "problem"),
    [
        (None, ""),
        ('{"cluster": ', "TF_CONFIG is not JSON (Expecting value: line 1 column 13 (char 12)); "),
        ("[1, 2]", 'TF_CONFIG needs a "cluster" object; '),
        (
            '{"cluster": ["127.0.0.1:1"], "task": {"type": "worker", "index": 0}}',
            'TF_CONFIG needs a "cluster" object; ',
        ),
        (
            '{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}',
            "TF_CONFIG needs a non-empty list of \"host:port\" strings for the job 'worker' (got '127.0.0.1:1'); ",
        ),
        (
            '{"cluster": {"worker": [1234]}, "task": {"type": "worker", "index": 0}}',
            "TF_CONFIG needs a non-empty list of \"host:port\" strings for the job 'worker' (got [1234]); ",
        ),
        (
            '{"cluster": {"ps": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}',
            "TF_CONFIG has a job 'ps' in its cluster, where only chief and worker go; ",
        ),
        ("{" + WORKERS + "}", 'TF_CONFIG needs a "task" object whose "type" is a job of its cluster (worker); '),
        (
            "{" + WORKERS + ', "task": {"type": "worker", "index": 2}}',
            "TF_CONFIG needs a task \"index\" from 0 to 1, a position in the 'worker' list (got 2); ",
        ),
        (
            "{" + WORKERS + ', "task": {"type": "worker", "index": "0"}}',
            "TF_CONFIG needs a task \"index\" from 0 to 1, a position in the 'worker' list (got '0'); ",
        ),
    ],
)
def test_multiworker_needs_a_valid_tf_config(face_folder, tmp_path, monkeypatch, tf_config, problem):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    # Refused by train_cli, before TensorFlow starts a strategy: multiworker_strategy would fail the test.
    monkeypatch.setattr(cluster, "multiworker_strategy", lambda *args: pytest.fail("TF_CONFIG reached TensorFlow"))
    with pytest.raises(RunError) as exit_info:
        train.train_command(tiny_train_args(face_folder, tmp_path / "run", "--strategy", "multiworker"))
    assert str(exit_info.value) == f"{problem}{train_cli.TF_CONFIG_HELP}"
    assert not (tmp_path / "run").exists()
