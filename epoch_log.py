"""What a training run records of each epoch: its row of history.csv (the losses, then where
the epoch's time went), loss_curves.png, and the line printed after it with the time left."""

from __future__ import annotations

import contextlib
import csv
import math
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

import latent
from errors import not_a_script
from images import atomic_write
from runs import HISTORY_FILE, LOSS_CURVES_FILE, duration_text, write_text_atomic

TIMING_COLUMNS = ("seconds_steps", "seconds_validation", "seconds_artifacts", "images_per_cpu_second")


class History(keras.callbacks.Callback):
    """history.csv (rewritten atomically) and loss_curves.png, before the epoch checkpoint: it always has its row."""

    def __init__(self, run_dir: Path, initial_epoch: int):
        super().__init__()
        self.csv_path, self.plot_path = run_dir / HISTORY_FILE, run_dir / LOSS_CURVES_FILE
        self.rows = read_history(self.csv_path)[:initial_epoch] if initial_epoch else []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}})
        self.write()
        plot_history(self.rows, self.plot_path)

    def write(self) -> None:
        columns = list(dict.fromkeys(key for r in self.rows for key in r))
        lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in self.rows]
        write_text_atomic(self.csv_path, "\n".join(lines) + "\n")


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
            for row in csv.DictReader(handle)
        ]


def plot_history(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure to close
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", "total loss"), ("reconstruction", "reconstruction"), ("kl", "KL"), ("mse", "per-pixel MSE")]
    figure = Figure(figsize=(4 * len(panels), 3.2))
    axes = figure.subplots(1, len(panels))
    epochs = [r["epoch"] for r in rows]
    for axis, (key, title) in zip(axes, panels, strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            axis.plot(epochs, [r.get(prefix + key, float("nan")) for r in rows], marker="o", markersize=3, label=label)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_xlim(0.5, epochs[-1] + 0.5)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs, also for one
        axis.grid(alpha=0.3)
    axes[0].legend()
    # Fixed margins rather than tight_layout, which draws the figure once more: half the time of each epoch's plot.
    figure.subplots_adjust(left=0.04, right=0.99, bottom=0.15, top=0.9, wspace=0.25)
    with atomic_write(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")


def now() -> np.ndarray:
    """[wall-clock seconds, CPU seconds of this process, all its threads (user + system)]."""
    return np.array([time.perf_counter(), time.process_time()])


class EpochTimes(keras.callbacks.Callback):
    """Where an epoch's time goes (steps, validation, the artifacts of the callbacks before it), added to its
    history.csv row and, unless verbose is 0, printed with the time left, the density fit included."""

    def __init__(
        self, history: History, config: dict, verbose: int, density_images: int = 0, validation_images: int = 0
    ):
        super().__init__()
        self.history, self.config, self.verbose = history, config, verbose
        self.density_images, self.validation_images = density_images, validation_images
        self.density_seconds = math.inf  # the fit's estimate: the least so far, as other work only slows it

    def on_epoch_begin(self, epoch, logs=None):
        self.marks, self.steps, self.backups = {"begin": now()}, 0, np.zeros(2)  # backups: as now()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_test_begin(self, logs=None):
        self.marks["validation"] = now()

    def on_test_end(self, logs=None):
        self.marks["artifacts"] = now()

    @contextlib.contextmanager
    def backup(self) -> Iterator[None]:
        """Time a step backup as an artifact rather than as training steps."""
        started = now()
        yield
        self.backups += now() - started

    def on_epoch_end(self, epoch, logs=None):
        begin, end = self.marks["begin"], now()
        validation, artifacts = self.marks.get("validation", end), self.marks.get("artifacts", end)
        (steps_seconds, steps_cpu), images = validation - begin - self.backups, self.steps * self.config["batch_size"]
        figures = {
            "seconds_steps": steps_seconds,
            "seconds_validation": artifacts[0] - validation[0],
            "seconds_artifacts": end[0] - artifacts[0] + self.backups[0],
            "images_per_cpu_second": images / steps_cpu if steps_cpu > 0 else float("nan"),
        }
        self.history.rows[-1].update({key: round(float(value), 3) for key, value in figures.items()})
        self.history.write()
        if self.verbose:
            total, left = end[0] - begin[0], self.config["epochs"] - epoch - 1
            # Validation ran the encoder and the decoder: the density fit encodes at least as fast.
            encode_rate = self.validation_images / max(figures["seconds_validation"], 1e-3)
            estimate = latent.fit_seconds(self.density_images, self.config["latent_dim"], encode_rate)
            self.density_seconds = min(self.density_seconds, estimate)
            to_go = left * total + self.density_seconds
            still = [f"the {left} epoch(s) left"] * bool(left) + ["the latent density"] * bool(self.density_images)
            print(
                f"epoch {epoch + 1}: {total:.1f} s: training steps {figures['seconds_steps']:.1f} s "
                f"({figures['images_per_cpu_second']:.0f} images per CPU-second), validation "
                f"{figures['seconds_validation']:.1f} s, artifacts {figures['seconds_artifacts']:.1f} s "
                f"({(total - figures['seconds_steps']) / total:.0%} of the epoch around the steps)"
                + (f"; about {duration_text(to_go)} to go for {' and '.join(still)}" if still else ""),
                flush=True,
            )


if __name__ == "__main__":
    not_a_script(__file__)
