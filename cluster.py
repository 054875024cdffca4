"""The tf.distribute strategy of a training run and a multi-worker cluster's start and end: --strategy
multiworker waits at most --worker-start-timeout for every worker of TF_CONFIG, naming those that did not
start; only the chief writes the run folder.

The one module that imports a private TensorFlow module: `context.configure_coordination_service`, with no
public counterpart, limits how long MultiWorkerMirroredStrategy's coordination service waits for its tasks."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import math
import os
import re
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import tensorflow as tf
from tensorflow.python.eager import context  # the coordination service's settings (see above)

import train_cli
from errors import not_a_script
from runs import native_start_up_lines_filtered
from train_cli import RunError

TASK_NAME = r"/job:(\w+)/replica:\d+/task:(\d+)"  # a task of a TensorFlow cluster, as its messages name it


@dataclasses.dataclass
class Worker:
    """This process's part in a run: the strategy it trains under, whether it writes the run folder (the
    chief, or the only process) and its --cache (worker_cache)."""

    strategy: tf.distribute.Strategy
    chief: bool
    cache: str

    @contextlib.contextmanager
    def output_folder(self, run_dir: Path) -> Iterator[Path]:
        """Where this process writes: the run folder, or for a worker other than the chief a scratch folder."""
        if self.chief:
            run_dir.mkdir(parents=True, exist_ok=True)
            yield run_dir
            return
        with tempfile.TemporaryDirectory(prefix="vae-worker-") as scratch:
            yield Path(scratch)


def start(config: dict, worker_start_timeout: float) -> Worker:
    """This process's Worker, once its strategy runs and its replicas are known to share the batch evenly."""
    if config["strategy"] == "multiworker":  # its messages while it waits go out as they come
        strategy = multiworker_strategy(worker_start_timeout)
    else:
        with native_start_up_lines_filtered():  # choose_strategy's first look at the devices: CUDA's start-up lines
            strategy = choose_strategy(config["strategy"])
    replicas = strategy.num_replicas_in_sync
    if config["batch_size"] % replicas:
        raise RunError(
            f"--batch-size {config['batch_size']} must be a multiple of the {replicas} replicas, "
            "each of which trains on an equal share of the global batch"
        )
    return Worker(strategy, train_cli.writes_run_folder(config), worker_cache(config))


def choose_strategy(name: str) -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs (with "mirrored" and no GPU, the CPUs), else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy(
            [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
        )
    return tf.distribute.get_strategy()


def multiworker_strategy(start_timeout: float) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy once all TF_CONFIG's tasks started; RunError naming those missing at the timeout."""
    cluster, kind, index = train_cli.read_tf_config()
    leader = f"/job:{'chief' if 'chief' in cluster else 'worker'}/replica:0/task:0"
    service = context.context()
    service.configure_coordination_service(
        service_type="standalone", service_leader=leader, cluster_register_timeout_in_ms=math.ceil(start_timeout * 1000)
    )
    for job, addresses in cluster.items():
        service.coordination_service.coordinated_job_list.add(name=job, num_tasks=len(addresses))
    service.coordination_service.cluster_register_with_barrier = True
    workers = sum(map(len, cluster.values()))
    print(f"multiworker: {kind} {index} of {workers}, waiting up to {start_timeout:g} s until all of them have started")
    sys.stdout.flush()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        # The coordination service catches SIGTERM: give it back its usual effect until training handles it.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        atexit.register(quiet_native_log)  # after the last line, whatever ends the run
        return strategy
    except tf.errors.DeadlineExceededError as error:
        # The tasks it timed out on, one a line after "timed out task names:".
        listed = re.match(rf"(\s*{TASK_NAME})*", error.message.partition("timed out task names:")[2]).group()
    stragglers = dict.fromkeys(re.findall(TASK_NAME, listed))
    if stragglers:
        what = ", ".join(f"{job} {task} ({cluster[job][int(task)]})" for job, task in stragglers) + " did not start"
    else:  # this task could not even reach the service
        job, task = re.search(TASK_NAME, leader).groups()
        what = f"{job} {task} ({cluster[job][int(task)]}) could not be reached (not started, or its port blocked)"
    gc.collect()  # the coordination agent logs its error state again as the failed start's objects go: before our line
    raise RunError(
        f"{what} within --worker-start-timeout {start_timeout:g} s; start train.py on every worker of TF_CONFIG, "
        "each with its own task index, within that time of one another"
    )


def worker_cache(config: dict) -> str:
    """This process's --cache: a file cache gets a subfolder per worker, as two must not write one."""
    cache = config["cache"]
    if cache in ("memory", "none") or config["strategy"] != "multiworker":
        return cache
    _, kind, index = train_cli.read_tf_config()
    return str(Path(cache) / f"{kind}{index}")


def quiet_native_log() -> None:
    """Send stderr to /dev/null: after a worker's last line, the coordination service complains of those gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)


if __name__ == "__main__":
    not_a_script(__file__)
