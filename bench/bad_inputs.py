"""Bad inputs and faults against the real command lines: does each give one line that says what
to do, a non-zero exit code, and leave every existing file as it was?

    python bench/bad_inputs.py                            # in a fresh temporary folder, removed after
    python bench/bad_inputs.py --work /tmp/survey --json survey.json
    python bench/bad_inputs.py --only 'gen-*' 'train-lock-*'

Everything happens in a scratch folder (--work, or a temporary one; never the repository): a
tiny Kaggle-layout fixture of generated faces (tests/helpers.py's), a plain face folder, two
tiny trained runs (16x16 images, 1 epoch, trained side by side, one with the default --verbose
and stdout piped to a log) and their ONNX exports (one under umask 022, one under 027). Then
each case runs a script of the repository (train.py, generate.py, export_onnx.py, evaluate.py,
latent.py, data.py, web/serve.py) as a subprocess, from an empty folder in the scratch area,
with a timeout and TF_CPP_MIN_LOG_LEVEL unset, as a user would run it, and records: the exit
code, the last non-empty line of stderr (the one-line message), whether a traceback was
printed, and which files that existed before the case changed, vanished or appeared (a sha256
of every file in the scratch area before and after; a case's fresh output folder, the files a
case is meant to write, and the run folders' .lock files, whose content is the lock holder's
pid, do not count). A few cases are checks of a result instead of an error (a 16-bit PNG read
correctly, damaged images skipped by name, file modes, --help timings); their message column
says what was checked.

A case fails when it prints a traceback, exits 0 where an error was expected (or non-zero
where success was), times out, ends with a line that is not `error: ...` (or argparse's
`<script>: error: ...`) or is a bare `error: [Errno N] ...`, touches a file, or fails its check.
Whether a message says the right thing is left to the reader of the table. The script prints a Markdown table
and a summary, and exits 1 when any case failed, so it is a real check. Whole survey: about
five minutes on a 2-core CPU, mostly TensorFlow start-ups. The disk-full cases mount a 2 MB
tmpfs in the scratch area (root only); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# The fixture builders of the test suite (tests/helpers.py imports no TensorFlow).
from helpers import attribute_row, bomb_png, face_image, partition_of, write_faces  # noqa: E402
from machine import machine_lines  # noqa: E402

from data import CELEBA_ATTRIBUTES  # noqa: E402

SHARED = REPO.parent / "shared"
SCRIPTS = (
    "train.py",
    "generate.py",
    "export_onnx.py",
    "evaluate.py",
    "latent.py",
    "data.py",
    "align.py",
    "web/serve.py",
)
TINY_MODEL = ["--image-size", "16", "--filters", "8,16", "--hidden", "32", "--latent", "8", "--batch-size", "8"]
TINY_MODEL += ["--lr-warmup", "0"]
FACES = 24  # in the Kaggle fixture: 18 train, 4 validation, 2 test; Smiling on every other one
PROC = Path("/proc/celeba-vae-survey")  # no one may create anything there, not even root
HELP_SECONDS = 3.0  # --help and argument errors: Python alone, no TensorFlow start-up (4 s and more here)
# TensorFlow's and absl's C++ start-up lines, which no Python setting silences.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\])")
ERROR_LINE = re.compile(r"^(error: |[\w/]+\.py: error: )")


@dataclass
class Outcome:
    """What a case's command did."""

    exit: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Case:
    name: str
    argv: list[str]  # a script of the repository and its flags
    expect: str = "error"  # "error": one line, non-zero exit; "ok": exit `status` and `check` passes
    status: int = 0  # the exit status of an "ok" case (130: stopped by Ctrl-C, as asked)
    prepare: Callable[[], None] | None = None  # builds the case's inputs, before the files are hashed
    # (passed, what was checked) from the outcome, after the files are hashed again
    check: Callable[[Outcome], tuple[bool, str]] | None = None
    may_write: tuple[str, ...] = ()  # patterns (relative to the scratch folder) of files the case may write
    run: Callable[[Case], Outcome] | None = None  # instead of running argv (several processes, or none)
    skip: str = ""  # a reason to skip the case
    shown: str = ""  # the command as the table shows it, when it is not argv
    results: list[Outcome] = field(default_factory=list)  # of every process, where `run` starts several


@dataclass
class Record:
    name: str
    command: str
    exit: int | None
    message: str
    traceback: bool
    touched: list[str]
    seconds: float
    problems: list[str] = field(default_factory=list)
    skipped: str = ""


class Survey:
    """The scratch area and the fixtures every case works on."""

    def __init__(self, work: Path, timeout: float):
        self.work = work
        self.timeout = timeout
        self.cwd = work / "cwd"  # where every command runs: default outputs land here, not in the repository
        self.kaggle = work / "data" / "kaggle"
        self.faces = work / "data" / "faces"
        self.files = work / "files"
        self.run_a, self.run_b = work / "runs" / "a", work / "runs" / "b"
        self.exp_a, self.exp_b = work / "exp" / "a", work / "exp" / "b"
        self.disk = work / "disk"
        self.disk_mounted = False
        self.env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
        self.setup_log: Outcome | None = None  # run A's training
        self.export_b_log: Outcome | None = None

    # ------------------------------------------------------------------ paths and commands
    def case_dir(self, name: str) -> Path:
        """A case's own copies of inputs (hashed: they exist before the command runs)."""
        return self.work / "cases" / name

    def out(self, name: str) -> Path:
        """A case's fresh output folder (not hashed: new files there are the case's outputs)."""
        return self.work / "out" / name

    def short(self, argv: Sequence[str]) -> str:
        images = str(self.kaggle / "img_align_celeba" / "img_align_celeba")
        return " ".join(str(part).replace(images, "W/kaggle-images").replace(str(self.work), "W") for part in argv)

    def start(self, argv: Sequence[str], umask: int = 0o022) -> subprocess.Popen:
        previous = os.umask(umask)  # inherited by the child
        try:
            return subprocess.Popen(
                [sys.executable, str(REPO / argv[0]), *map(str, argv[1:])],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
        finally:
            os.umask(previous)

    def finish(self, process: subprocess.Popen, started: float, timeout: float) -> Outcome:
        try:
            stdout, stderr = process.communicate(timeout=max(1.0, timeout - (time.perf_counter() - started)))
            code = process.returncode
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            code = None
        return Outcome(code, stdout, stderr, time.perf_counter() - started)

    def command(self, argv: Sequence[str]) -> Outcome:
        started = time.perf_counter()
        return self.finish(self.start(argv), started, self.timeout)

    # ------------------------------------------------------------------ fixtures
    def build(self) -> None:
        for folder in (self.cwd, self.files, self.work / "cases", self.work / "out"):
            folder.mkdir(parents=True, exist_ok=True)
        names = [f"{i:06d}.jpg" for i in range(1, FACES + 1)]
        write_faces(self.kaggle / "img_align_celeba" / "img_align_celeba", names)
        (self.kaggle / "list_eval_partition.csv").write_text(
            "image_id,partition\n" + "".join(f"{n},{partition_of(i)}\n" for i, n in enumerate(names))
        )
        rows = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
        rows += [f"{n}," + ",".join(map(str, attribute_row(i))) for i, n in enumerate(names)]
        (self.kaggle / "list_attr_celeba.csv").write_text("\n".join(rows) + "\n")
        (self.kaggle / "identity_CelebA.txt").write_text("".join(f"{n} {i // 4}\n" for i, n in enumerate(names)))
        # 60 faces: their hash split gives 46 training, 2 validation and 12 test images
        write_faces(self.faces, [f"face{i:02d}.png" for i in range(30)], seed=2)
        write_faces(self.faces, [f"photo{i:02d}.jpg" for i in range(30)], seed=3)

        rng = np.random.default_rng(5)
        (self.files / "file.txt").write_text("a file where a folder is expected\n")
        grey = np.asarray(face_image(rng).convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        Image.fromarray(grey).save(self.files / "deep.png")
        bomb_png(self.files / "bomb.png")
        (self.files / "text.jpg").write_text("these are not the pixels you are looking for\n")
        face_image(rng).save(self.files / "source.jpg", quality=90)
        raw = (self.files / "source.jpg").read_bytes()
        # JPEG start and end markers around random bytes: the first and last bytes look right
        (self.files / "garbage_body.jpg").write_bytes(b"\xff\xd8\xff" + rng.bytes(len(raw) - 5) + b"\xff\xd9")
        (self.files / "truncated.jpg").write_bytes(raw[: len(raw) // 2])

        # Two tiny runs side by side (2 cores): A with the default --verbose, its log piped like a
        # log file's; B with another seed, so its export differs.
        tiny = [*TINY_MODEL, "--epochs", "1", "--no-tensorboard"]
        started = time.perf_counter()
        train_a = self.start(["train.py", "--data", self.kaggle, "--out", self.run_a, *tiny])
        train_b = self.start(["train.py", "--data", self.kaggle, "--out", self.run_b, *tiny, "--seed", "1"])
        self.setup_log = self.finish(train_a, started, 600)
        self.expect_success(self.setup_log, "training run A")
        self.expect_success(self.finish(train_b, started, 600), "training run B")
        started = time.perf_counter()
        export_a = self.start(["export_onnx.py", "--run", self.run_a, "--out", self.exp_a], umask=0o022)
        export_b = self.start(["export_onnx.py", "--run", self.run_b, "--out", self.exp_b], umask=0o027)
        self.expect_success(self.finish(export_a, started, 600), "export of run A")
        self.export_b_log = self.finish(export_b, started, 600)
        self.expect_success(self.export_b_log, "export of run B")

    @staticmethod
    def expect_success(outcome: Outcome, what: str) -> None:
        if outcome.exit != 0:
            raise SystemExit(
                f"error: the {what} for the survey failed (exit {outcome.exit}):\n{outcome.stderr[-3000:]}"
            )

    def mount_disk(self) -> str:
        """Mount a 2 MB tmpfs for the disk-full cases; the reason when that is not possible."""
        if os.geteuid() != 0:
            return "needs root to mount a 2 MB tmpfs"
        self.disk.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(self.disk)], capture_output=True, text=True
        )
        if result.returncode != 0:
            return f"cannot mount a tmpfs: {result.stderr.strip() or result.returncode}"
        self.disk_mounted = True
        return ""

    def unmount_disk(self) -> None:
        if self.disk_mounted:
            subprocess.run(["umount", str(self.disk)], check=False)
            self.disk_mounted = False

    # ------------------------------------------------------------------ hashing
    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        """(sha256, inode, mtime) of every file in the scratch area but the fresh output folders and
        lock files: a file rewritten with the same bytes counts as touched too."""
        files = {}
        for path in sorted(self.work.rglob("*")):
            relative = path.relative_to(self.work).as_posix()
            if relative.startswith("out/") or path.name == ".lock" or not path.is_file() or path.is_symlink():
                continue
            status = path.stat()
            files[relative] = (hashlib.sha256(path.read_bytes()).hexdigest(), status.st_ino, status.st_mtime_ns)
        return files


def copy(source: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(source, target)) if source.is_dir() else Path(shutil.copy2(source, target))


def changed_files(before: dict, after: dict, may_write: Sequence[str]) -> list[str]:
    """What happened to the files of two snapshots, but to those matching `may_write`."""
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) == after.get(name) or any(fnmatch.fnmatch(name, pattern) for pattern in may_write):
            continue
        if name not in before or name not in after:
            kind = "new" if name not in before else "removed"
        else:
            kind = "changed" if before[name][0] != after[name][0] else "rewritten (same bytes)"
        changes.append(f"{kind} {name}")
    return changes


def stderr_message(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def other_stderr_lines(stderr: str) -> list[str]:
    """stderr lines besides the last, TensorFlow's start-up lines and argparse's usage block."""
    lines = [line for line in stderr.splitlines() if line.strip() and not TF_NOISE.match(line)][:-1]
    if lines and lines[0].startswith("usage: "):
        lines = [line for line in lines if not line.startswith(("usage: ", " "))]
    return lines


def judge(case: Case, outcome: Outcome | None, touched: list[str], survey: Survey) -> Record:
    if outcome is None:
        return Record(case.name, case.shown or survey.short(case.argv), None, "", False, [], 0.0, skipped=case.skip)
    everything = outcome.stdout + outcome.stderr
    traceback = "Traceback (most recent call last)" in everything
    problems = []
    if outcome.exit is None:
        problems.append(f"timed out after {outcome.seconds:.0f} s")
    if traceback:
        problems.append("traceback")
    try:
        passed, note = case.check(outcome) if case.check else (True, "")
    except Exception as error:  # a check that cannot even look: a missing output, say
        passed, note = False, f"{type(error).__name__}: {error}"
    if case.expect == "error":
        message = stderr_message(outcome.stderr) or "(nothing on stderr)"
        if outcome.exit == 0:
            problems.append("exit 0 where an error was expected")
        if not ERROR_LINE.match(message):
            problems.append("the last line is not an 'error: ...' line")
        elif message.startswith("error: [Errno"):
            problems.append("a bare OS error, which says nothing of what to do")
        extra = [line for line in other_stderr_lines(outcome.stderr) if "error" in line.lower()]
        if extra:
            problems.append(f"more error lines on stderr: {extra[0][:120]!r}")
        if note:
            message = f"{message} [{note}]"
    else:
        message = note or stderr_message(outcome.stdout)
        if outcome.exit not in (case.status, None):
            problems.append(f"exit {outcome.exit} where {case.status} was expected: {stderr_message(outcome.stderr)}")
    if not passed:
        problems.append(f"check failed: {note}")
    if touched:
        problems.append("touched files")
    return Record(
        case.name,
        case.shown or survey.short(case.argv),
        outcome.exit,
        message.replace(str(survey.work), "W"),
        traceback,
        touched,
        outcome.seconds,
        problems,
    )


def run_case(case: Case, survey: Survey) -> Record:
    if case.skip:
        return judge(case, None, [], survey)
    if case.prepare:
        case.prepare()
    before = survey.snapshot()
    outcome = case.run(case) if case.run else survey.command(case.argv)
    touched = changed_files(before, survey.snapshot(), case.may_write)
    return judge(case, outcome, touched, survey)


# ---------------------------------------------------------------------- the cases
def build_cases(survey: Survey, disk_problem: str) -> list[Case]:
    s = survey
    work = s.work
    file = s.files / "file.txt"
    nowhere = work / "nowhere"
    faces_a = [s.kaggle / "img_align_celeba" / "img_align_celeba" / f"00000{i}.jpg" for i in (1, 2)]
    cases: list[Case] = []

    def add(name: str, argv: list, **options) -> Case:
        case = Case(name, [str(part) for part in argv], **options)
        cases.append(case)
        return case

    # --help and argument errors: instant and quiet
    def quick(script: str, flag: str) -> Callable[[Outcome], tuple[bool, str]]:
        def check(outcome: Outcome) -> tuple[bool, str]:
            fast = outcome.seconds < HELP_SECONDS
            if flag == "--help":
                quiet = outcome.stderr.strip() == "" and outcome.stdout.startswith("usage:")
                return fast and quiet, f"usage in {outcome.seconds:.2f} s, {'nothing' if quiet else 'output'} on stderr"
            lines = outcome.stderr.strip().splitlines()
            one = outcome.exit == 2 and sum("error" in line for line in lines) == 1
            return fast and one, f"{outcome.seconds:.2f} s, exit {outcome.exit}"

        return check

    for script in SCRIPTS:
        base = script.removesuffix(".py").replace("/", "-")
        add(f"help-{base}", [script, "--help"], expect="ok", check=quick(script, "--help"))
        add(f"badflag-{base}", [script, "--no-such-flag"], check=quick(script, "--no-such-flag"))

    # train.py: flags, refused before anything is loaded
    new = ["train.py", "--data", s.kaggle, *TINY_MODEL, "--epochs", "1"]
    for name, flags in {
        "beta-negative": ["--beta", "-1"],
        "beta-nan": ["--beta", "nan"],
        "limit-negative": ["--limit", "-1"],
        "crop-negative": ["--crop", "-5"],
        "latent-zero": ["--latent", "0"],
        "image-size-7": ["--image-size", "7"],
        "batch-size-zero": ["--batch-size", "0"],
        "epochs-zero": ["--epochs", "0"],
        "lr-inf": ["--lr", "inf"],
        "filters-words": ["--filters", "big,small"],
    }.items():
        add(f"train-{name}", [*new, "--out", s.out(f"train-{name}") / "run", *flags])
    add("train-no-data", ["train.py", "--out", s.out("train-no-data") / "run", *TINY_MODEL])
    add("train-missing-data", [*new[:2], nowhere, *new[3:], "--out", s.out("train-missing-data") / "run"])
    three = s.case_dir("train-three-faces")
    add(
        "train-three-faces",
        [*new[:2], three, *new[3:], "--out", s.out("train-three-faces") / "run"],
        prepare=lambda: write_faces(three, ["face2.png", "face3.png", "face5.png"]),  # none in validation
    )
    add(
        "train-empty-data",
        [*new[:2], s.case_dir("train-empty-data"), *new[3:], "--out", s.out("train-empty-data") / "run"],
        prepare=lambda: s.case_dir("train-empty-data").mkdir(parents=True, exist_ok=True),
    )

    # train.py: where a run may go
    add("train-out-file", [*new, "--out", file])
    add("train-out-below-file", [*new, "--out", file / "run"])
    add("train-out-unwritable", [*new, "--out", PROC / "run"])
    exported = s.case_dir("train-out-exported") / "exp"
    add("train-out-exported", [*new, "--out", exported], prepare=lambda: copy(s.exp_a, exported))
    existing = s.case_dir("train-out-existing-run") / "run"
    add(
        "train-out-existing-run",
        [*new, "--out", existing, "--latent", "4"],
        prepare=lambda: copy(s.run_a, existing),
    )
    faces_out = s.case_dir("train-out-face-folder") / "faces"
    add("train-out-face-folder", [*new, "--out", faces_out], prepare=lambda: copy(s.faces, faces_out))
    add("train-cache-file", [*new, "--out", s.out("train-cache-file") / "run", "--cache", file])
    add("train-cache-below-file", [*new, "--out", s.out("train-cache-below-file") / "run", "--cache", file / "c"])
    add("train-cache-unwritable", [*new, "--out", s.out("train-cache-unwritable") / "run", "--cache", PROC / "c"])
    debris_only = s.case_dir("train-leftovers-of-a-killed-start") / "run"
    leftover = debris_only / ".config.json.0a1b2c3d.tmp"  # a run killed while writing its config.json

    def leftover_removed(outcome: Outcome) -> tuple[bool, str]:
        done = (debris_only / "checkpoint" / "epoch_001.weights.h5").is_file()
        return done and not leftover.exists(), (
            f"{'trained' if done else 'did not train'}; {leftover.name} {'left' if leftover.exists() else 'removed'}"
        )

    add(
        "train-leftovers-of-a-killed-start",
        [*new, "--out", debris_only],
        expect="ok",
        prepare=lambda: (debris_only.mkdir(parents=True, exist_ok=True), leftover.write_text('{"form')),
        check=leftover_removed,
        may_write=("cases/train-leftovers-of-a-killed-start/run/*",),
    )

    def two_trainings(delay: float) -> Callable[[Case], Outcome]:
        """A training on a fresh --out and, `delay` seconds later, another with --latent 4; the
        outcome shown is the refused one's (the second's when neither was refused)."""

        def run(case: Case) -> Outcome:
            out = s.out(case.name) / "run"
            started = time.perf_counter()
            first = s.start([*new, "--out", out])
            time.sleep(delay)
            second = s.start([*new, "--out", out, "--latent", "4", "--seed", "3"])
            case.results[:] = [s.finish(process, started, s.timeout) for process in (first, second)]
            return next((outcome for outcome in case.results if outcome.exit != 0), case.results[1])

        return run

    def one_trained(case_name: str, first_wins: bool) -> Callable[[Outcome], tuple[bool, str]]:
        """Exactly one of the two trainings finished (the first, when they started apart), with its own settings."""

        def check(outcome: Outcome) -> tuple[bool, str]:
            results = next(case for case in cases if case.name == case_name).results
            finished = [index for index, result in enumerate(results) if result.exit == 0]
            config = json.loads((s.out(case_name) / "run" / "config.json").read_text())
            ok = finished == [0] or (finished == [1] and not first_wins)
            ok = ok and config["latent_dim"] == (8 if finished == [0] else 4)
            which = {(0,): "the first", (1,): "the second"}.get(tuple(finished), f"{len(finished)} of them")
            return ok, f"{which} finished; its run has latent_dim {config['latent_dim']}"

        return check

    for name, delay, when in (("together", 0.0, "at once"), ("later", 2.0, "2 s apart")):
        shown = f"{s.short(new)} --out W/out/train-lock-{name}/run, twice {when} (the second with --latent 4)"
        check = one_trained(f"train-lock-{name}", first_wins=delay > 0)
        add(f"train-lock-{name}", [], run=two_trainings(delay), check=check, shown=shown)

    # train.py --resume
    resumed = {name: s.case_dir(name) / "run" for name in (
        "resume-other-flags", "resume-finished", "resume-truncated-checkpoint", "resume-edited-config",
        "resume-config-without-image-size", "resume-stale-temporary-files")}  # fmt: skip
    add(
        "resume-other-flags",
        ["train.py", "--resume", resumed["resume-other-flags"], "--latent", "64", "--lr", "0.5", "--batch-size", "16"],
        prepare=lambda: copy(s.run_a, resumed["resume-other-flags"]),
    )
    add("resume-missing-run", ["train.py", "--resume", nowhere])
    add(
        "resume-finished",
        ["train.py", "--resume", resumed["resume-finished"]],
        prepare=lambda: copy(s.run_a, resumed["resume-finished"]),
    )

    def truncate_checkpoint() -> None:
        checkpoint = copy(s.run_a, resumed["resume-truncated-checkpoint"]) / "checkpoint" / "epoch_001.weights.h5"
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])

    add(
        "resume-truncated-checkpoint",
        ["train.py", "--resume", resumed["resume-truncated-checkpoint"], "--epochs", "2"],
        prepare=truncate_checkpoint,
    )

    def edit_config(run: Path, **changes) -> None:
        config = json.loads((run / "config.json").read_text())
        config.update(changes)
        (run / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}, indent=2))

    def edited(name: str, **changes) -> Callable[[], None]:
        return lambda: edit_config(copy(s.run_a, resumed[name]), **changes)

    add(
        "resume-edited-config",
        ["train.py", "--resume", resumed["resume-edited-config"], "--epochs", "2"],
        prepare=edited("resume-edited-config", latent_dim=16),
    )
    add(
        "resume-config-without-image-size",
        ["train.py", "--resume", resumed["resume-config-without-image-size"], "--epochs", "2"],
        prepare=edited("resume-config-without-image-size", image_size=None),
    )
    stale = resumed["resume-stale-temporary-files"]
    debris = [
        "checkpoint/.partial.weights.h5",
        ".encoder.partial.keras",
        ".history.csv.0f3e2d1c.tmp",
        "samples/.epoch_002.png.a1b2c3d4.tmp",
    ]

    def leave_debris() -> None:
        copy(s.run_a, stale)
        for name in debris:
            (stale / name).write_bytes(b"\0" * 20_000)

    def debris_removed(outcome: Outcome) -> tuple[bool, str]:
        left = [name for name in debris if (stale / name).exists()]
        said = next((line for line in outcome.stdout.splitlines() if "temporary file" in line), "")
        resumed_to = sorted(p.name for p in (stale / "checkpoint").glob("epoch_*.weights.h5"))
        ok = not left and said != "" and resumed_to == ["epoch_002.weights.h5"]
        return ok, f"{said.replace(str(work), 'W') or 'no word of the temporary files'}; left: {left or 'none'}"

    add(
        "resume-stale-temporary-files",
        ["train.py", "--resume", stale, "--epochs", "2"],
        expect="ok",
        prepare=leave_debris,
        check=debris_removed,
        may_write=("cases/resume-stale-temporary-files/run/*",),
    )

    # a full disk (a 2 MB tmpfs)
    disk_run = s.disk / "run"

    def fill_disk(free: int, copies: dict[Path, Path] | None = None) -> None:
        """Empty the tmpfs, copy (source: target) there, and fill it up to `free` bytes."""
        for path in s.disk.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for source, target in (copies or {}).items():
            copy(source, target)
        left = shutil.disk_usage(s.disk).free - free
        (s.disk / "filler").write_bytes(b"\1" * max(0, left))

    def checkpoint_kept(outcome: Outcome) -> tuple[bool, str]:
        original = (s.run_a / "checkpoint" / "epoch_001.weights.h5").read_bytes()
        kept = (disk_run / "checkpoint" / "epoch_001.weights.h5").read_bytes() == original
        partial = [p.name for p in disk_run.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]
        (s.disk / "filler").unlink()  # the space comes back: the run must go on from its checkpoint
        again = s.command(["train.py", "--resume", disk_run, "--epochs", "2"])
        ok = kept and not partial and again.exit == 0
        return ok, (
            f"epoch 1 checkpoint {'intact' if kept else 'CHANGED'}, partial files left: {partial or 'none'}; "
            f"after freeing the space --resume {'finished' if again.exit == 0 else 'failed: ' + stderr_message(again.stderr)}"
        )

    def nothing_partial(outcome: Outcome) -> tuple[bool, str]:
        partial = [p.name for p in s.disk.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]
        return not partial, f"partial files left: {partial or 'none'}"

    failed_resume_writes = tuple(
        f"disk/run/{pattern}"
        for pattern in (
            "config.json",
            "*.keras",
            "history.csv",
            "loss_curves.png",
            "samples/*",
            "reconstructions/*",
            "tensorboard/*",
        )
    )
    add(
        "disk-full-on-resume",
        ["train.py", "--resume", disk_run, "--epochs", "2"],
        prepare=lambda: fill_disk(120_000, {s.run_a: disk_run}),
        check=checkpoint_kept,
        may_write=failed_resume_writes,
        skip=disk_problem,
    )
    for free in (60_000, 300_000):
        add(
            f"disk-full-new-run-{free // 1000}k",
            [*new, "--out", s.disk / "new"],
            prepare=lambda free=free: fill_disk(free),
            check=nothing_partial,
            may_write=("disk/new/*",),
            skip=disk_problem,
        )

    # run B exported over run A's export on a full disk: B's decoder fits, its encoder does not
    add(
        "disk-full-export",
        ["export_onnx.py", "--run", s.run_b, "--out", s.disk / "exp"],
        prepare=lambda: fill_disk(50_000, {s.exp_a: s.disk / "exp"}),
        check=nothing_partial,
        skip=disk_problem,
    )
    add(
        "disk-full-generate",
        [*["generate.py", "--run", s.disk / "exp", "--mode", "sample"], "--samples", "64", "--scale", "8",
         "--out", s.disk / "x.png"],
        prepare=lambda: fill_disk(8_000, {s.exp_a: s.disk / "exp"}),
        check=nothing_partial,
        skip=disk_problem,
    )  # fmt: skip
    add(
        "disk-full-evaluate",
        ["evaluate.py", "--run", s.disk / "exp", "--data", s.kaggle, "--out", s.disk / "eval.json"],
        prepare=lambda: fill_disk(0, {s.exp_a: s.disk / "exp"}),
        check=nothing_partial,
        skip=disk_problem,
    )

    # data faults, through train.py
    def kaggle_with(name: str, file: str, content: bytes) -> Callable[[], None]:
        def prepare() -> None:
            (copy(s.kaggle, s.case_dir(name) / "kaggle") / file).write_bytes(content)

        return prepare

    partition = (s.kaggle / "list_eval_partition.csv").read_bytes()
    partition_lines = partition.splitlines(keepends=True)
    for name, content in {
        "partition-other-header": b"image,split\n" + b"".join(partition_lines[1:]),
        "partition-non-integer": b"".join(partition_lines[:3]) + b"000003.jpg,train\n" + b"".join(partition_lines[4:]),
        "partition-non-utf8": b"".join(partition_lines[:3]) + b"00000\xe9.jpg,0\n" + b"".join(partition_lines[4:]),
    }.items():
        add(
            f"train-{name}",
            ["train.py", "--data", s.case_dir(f"train-{name}") / "kaggle", *new[3:], "--out", s.out(name) / "run"],
            prepare=kaggle_with(f"train-{name}", "list_eval_partition.csv", content),
        )
    attributes = (s.kaggle / "list_attr_celeba.csv").read_text()
    attribute_lines = attributes.splitlines()

    def with_value(value: str, column: int = 1) -> bytes:
        """The attribute file with one label of 000002.jpg replaced."""
        row = attribute_lines[2].split(",")
        row[column] = value
        return "\n".join([*attribute_lines[:2], ",".join(row), *attribute_lines[3:]]).encode() + b"\n"

    blank_end = attributes.encode() + b"\n\n"
    trained = "train-attributes-blank-line-at-end"
    add(
        trained,
        ["train.py", "--data", s.case_dir(trained) / "kaggle", *new[3:], "--out", s.out(trained) / "run"],
        expect="ok",
        prepare=kaggle_with(trained, "list_attr_celeba.csv", blank_end),
        check=lambda outcome: (True, stderr_message(outcome.stdout)),
    )

    damaged_folder = s.case_dir("train-damaged-images") / "faces"

    def damaged_data() -> None:
        copy(s.faces, damaged_folder)
        for name in ("garbage_body.jpg", "text.jpg", "truncated.jpg", "bomb.png"):
            shutil.copy(s.files / name, damaged_folder / name)

    def damaged_named(outcome: Outcome) -> tuple[bool, str]:
        warning = next((line for line in outcome.stderr.splitlines() if "cannot be decoded" in line), "")
        counted = re.search(r"skipped (\d+) of \d+", warning)
        named = all(name in outcome.stderr for name in ("garbage_body.jpg", "text.jpg"))
        ok = named and counted is not None and int(counted.group(1)) >= 1
        return ok, re.sub(r"\s+", " ", warning) or "no warning"

    add(
        "train-damaged-images",
        ["train.py", "--data", damaged_folder, *new[3:], "--out", s.out("train-damaged-images") / "run"],
        expect="ok",
        prepare=damaged_data,
        check=damaged_named,
    )

    inside = s.case_dir("data-run-inside-face-folder") / "faces"

    def run_inside() -> None:
        copy(s.faces, inside)
        copy(s.run_a, inside / "run_a")

    def faces_counted(outcome: Outcome) -> tuple[bool, str]:
        found = re.search(r": (\d+) images", outcome.stdout)
        count = len(list(s.faces.iterdir()))
        ok = found is not None and int(found.group(1)) == count
        return ok, f"{found.group(1) if found else '?'} images listed, {count} faces in the folder (a run inside)"

    add(
        "data-run-inside-face-folder",
        ["data.py", "--data", inside],
        expect="ok",
        prepare=run_inside,
        check=faces_counted,
    )

    # export_onnx.py
    # Run B exported over run A's export with a --tolerance that B's decoder meets and its encoder
    # does not (from the differences B's export printed), so that only the second part fails.
    differences = {
        part: max(float(value) for value in re.findall(r"([0-9.e+-]+) \(batch", line))
        for part, line in re.findall(r"^(decoder|encoder): max \|ONNX - Keras\| (.*)$", s.export_b_log.stdout, re.M)
    }
    encoder_fails = differences.get("encoder", 0) > differences.get("decoder", 0) > 0
    tolerance = (differences["decoder"] * differences["encoder"]) ** 0.5 if encoder_fails else 1e-12
    target = s.case_dir("export-encoder-fails-over-other-export") / "exp"
    add(
        "export-encoder-fails-over-other-export",
        ["export_onnx.py", "--run", s.run_b, "--out", target, "--tolerance", f"{tolerance:.2g}"],
        prepare=lambda: copy(s.exp_a, target),
        check=lambda outcome: (True, "the encoder failed" if encoder_fails else "the decoder failed first"),
    )
    add("export-missing-run", ["export_onnx.py", "--run", nowhere])
    add("export-out-file", ["export_onnx.py", "--run", s.run_a, "--out", file])
    add("export-out-below-file", ["export_onnx.py", "--run", s.run_a, "--out", file / "exp"])
    add("export-out-unwritable", ["export_onnx.py", "--run", s.run_a, "--out", PROC / "exp"])
    edited_run = s.case_dir("edited-config") / "run"
    add(
        "export-edited-config",
        ["export_onnx.py", "--run", edited_run, "--out", s.out("export-edited-config")],
        prepare=lambda: edit_config(copy(s.run_a, edited_run), latent_dim=16),
    )
    add(
        "gen-edited-config-keras",
        ["generate.py", "--run", edited_run, "--backend", "keras", "--mode", "sample", "--out", s.out("gen") / "x.png"],
        prepare=lambda: edit_config(copy(s.run_a, edited_run), latent_dim=16),
    )
    add("export-tolerance-nan", ["export_onnx.py", "--run", s.run_a, "--tolerance", "nan"])
    no_size = s.case_dir("export-config-without-image-size") / "run"
    add(
        "export-config-without-image-size",
        ["export_onnx.py", "--run", no_size, "--out", s.out("export-config-without-image-size")],
        prepare=lambda: edit_config(copy(s.run_a, no_size), image_size=None),
    )

    # generate.py (on the ONNX export: no TensorFlow)
    mixed = s.case_dir("mixed-pair") / "exp"

    def mixed_pair() -> None:
        copy(s.exp_a, mixed)
        shutil.copy(s.exp_b / "decoder.onnx", mixed / "decoder.onnx")

    gen = ["generate.py", "--run", s.exp_a]
    sample = [*gen, "--mode", "sample"]
    deep_out = s.out("gen-16bit-grey-png") / "deep.png"

    def sixteen_bit(outcome: Outcome) -> tuple[bool, str]:
        tile = np.asarray(Image.open(deep_out.with_suffix("") / "r00_c00.png"), dtype=np.float64)
        mode = stat.S_IMODE(deep_out.stat().st_mode)
        ok = tile.mean() < 250 and tile.std() > 10 and mode == 0o644
        return ok, f"input tile mean {tile.mean():.0f}, std {tile.std():.0f} (a white tile: 255, 0); grid mode {mode:o}"

    add(
        "gen-16bit-grey-png",
        ["generate.py", "--run", s.exp_a, "--mode", "reconstruct", "--no-align", "--images", s.files / "deep.png",
         "--save-individual", "--out", deep_out],
        expect="ok",
        check=sixteen_bit,
    )  # fmt: skip
    gen_out = ["--out", s.out("gen") / "x.png"]
    for name, flags in {
        "temperature-nan": ["--mode", "sample", "--temperature", "nan"],
        "temperature-inf": ["--mode", "sample", "--temperature", "1", "inf"],
        "span-nan": ["--mode", "traverse", "--origin", "--span", "nan"],
        "alphas-nan": ["--mode", "attribute", "--alphas", "nan"],
        "weights-nan": ["--mode", "weighted", "--no-align", "--images", *faces_a, "--weights", "nan", "1"],
        "samples-100000": ["--mode", "sample", "--samples", "100000"],
        "mode-typo": ["--mode", "sampel"],
    }.items():
        add(f"gen-{name}", [*gen, *flags, *gen_out])
    add("gen-bomb-image", ["generate.py", "--run", s.exp_a, "--mode", "reconstruct", "--images", s.files / "bomb.png"])
    add("gen-text-as-jpg", ["generate.py", "--run", s.exp_a, "--mode", "reconstruct", "--images", s.files / "text.jpg"])
    add("gen-missing-image", ["generate.py", "--run", s.exp_a, "--mode", "reconstruct", "--images", nowhere / "a.jpg"])
    add("gen-missing-run", ["generate.py", "--run", nowhere, "--mode", "sample"])
    add("gen-no-face", ["generate.py", "--run", s.exp_a, "--mode", "reconstruct", "--images", *faces_a[:1], *gen_out])
    add("gen-faces-typo", ["generate.py", "--run", s.exp_a, "--mode", "reconstruct", "--faces", "biggest"])

    # align.py
    add("align-missing-data", ["align.py", "--data", nowhere, "--out", s.out("align")])
    add("align-out-inside-data", ["align.py", "--data", s.faces, "--out", s.faces / "aligned"])
    add("align-out-file", ["align.py", "--data", s.faces, "--out", file])
    add("align-out-unwritable", ["align.py", "--data", s.faces, "--out", PROC / "aligned"])
    add("align-jobs-zero", ["align.py", "--data", s.faces, "--out", s.out("align-jobs"), "--jobs", "0"])
    add("align-jobs-huge", ["align.py", "--data", s.faces, "--out", s.out("align-jobs"), "--jobs", "100000"])
    add(
        "align-empty-folder",
        ["align.py", "--data", s.case_dir("align-empty"), "--out", s.out("align-empty")],
        prepare=lambda: s.case_dir("align-empty").mkdir(parents=True, exist_ok=True),
    )

    def walls() -> None:  # photos with no face in them
        s.case_dir("align-no-faces").mkdir(parents=True, exist_ok=True)
        for colour in ("teal", "white", "black"):
            Image.new("RGB", (320, 240), colour).save(s.case_dir("align-no-faces") / f"{colour}.png")

    add(
        "align-no-faces",
        ["align.py", "--data", s.case_dir("align-no-faces"), "--out", s.out("align-no-faces")],
        prepare=walls,
    )
    add("gen-out-below-file", [*sample, "--out", file / "x.png"])
    add("gen-out-folder", [*sample, "--out", s.files])
    add("gen-out-unwritable", [*sample, "--out", PROC / "x.png"])
    add(
        "gen-unknown-attribute",
        ["generate.py", "--run", s.exp_a, "--mode", "attribute", "--data", s.kaggle, "--attribute", "Smiley", *gen_out],
    )
    add(
        "gen-mixed-pair",
        ["generate.py", "--run", mixed, "--mode", "interpolate", "--no-align", "--images", *faces_a, *gen_out],
        prepare=mixed_pair,
    )
    onnx_no_size = s.case_dir("gen-config-without-image-size") / "exp"
    add(
        "gen-config-without-image-size",
        ["generate.py", "--run", onnx_no_size, "--mode", "sample", *gen_out],
        prepare=lambda: edit_config(copy(s.exp_a, onnx_no_size), image_size=None),
    )
    for name, content in {
        "no": with_value("no"),
        "-1.0": with_value("-1.0", 2),
        "0": with_value("0", 3),
        "2": with_value("2", 4),
        "empty": b"",
        "non-utf8": attributes.replace("000003.jpg", "00000\0.jpg", 1).encode().replace(b"\0", b"\xe9"),
        "blank-line-at-end": blank_end,
    }.items():
        case_name = f"gen-attributes-{name}"
        run_copy = s.case_dir(case_name) / "exp"

        def prepare(case_name: str = case_name, content: bytes = content, run_copy: Path = run_copy) -> None:
            kaggle_with(case_name, "list_attr_celeba.csv", content)()
            copy(s.exp_a, run_copy)

        ok = name == "blank-line-at-end"
        add(
            case_name,
            ["generate.py", "--run", run_copy, "--mode", "attribute", "--data", s.case_dir(case_name) / "kaggle",
             "--recompute", "--out", s.out(case_name) / "x.png"],
            expect="ok" if ok else "error",
            prepare=prepare,
            may_write=(f"cases/{case_name}/exp/attribute_directions.json",) if ok else (),
        )  # fmt: skip

    # evaluate.py (ONNX export) and latent.py
    evaluate = ["evaluate.py", "--run", s.exp_a, "--data", s.kaggle]
    add("eval-missing-run", ["evaluate.py", "--run", nowhere, "--data", s.kaggle])
    add("eval-missing-data", ["evaluate.py", "--run", s.exp_a, "--data", nowhere])
    add("eval-out-below-file", [*evaluate, "--out", file / "sub" / "eval.json"])
    add("eval-out-folder", [*evaluate, "--out", s.files])
    add("eval-out-unwritable", [*evaluate, "--out", PROC / "eval.json"])
    add("eval-limit-negative", [*evaluate, "--limit", "-1", "--out", s.out("eval") / "e.json"])
    add("eval-batch-size-zero", [*evaluate, "--batch-size", "0", "--out", s.out("eval") / "e.json"])
    add("eval-mixed-pair", ["evaluate.py", "--run", mixed, "--data", s.kaggle, "--out", s.out("eval") / "e.json"],
        prepare=mixed_pair)  # fmt: skip
    add(
        "eval-config-without-image-size",
        ["evaluate.py", "--run", onnx_no_size, "--data", s.kaggle, "--out", s.out("eval") / "e.json"],
        prepare=lambda: edit_config(copy(s.exp_a, onnx_no_size), image_size=None),
    )
    add("latent-missing-run", ["latent.py", "--run", nowhere])
    add("latent-components-zero", ["latent.py", "--run", s.exp_a, "--components", "0"])

    # results of the set-up: the log of a piped training, file modes
    def logged(case: Case) -> Outcome:
        return s.setup_log

    def one_line_per_epoch(outcome: Outcome) -> tuple[bool, str]:
        text = outcome.stdout + outcome.stderr
        codes = text.count("\x1b") + text.count("\r") + text.count("\b")
        progress = [line for line in outcome.stdout.splitlines() if re.match(r"^\d+/\d+ ", line)]
        return codes == 0 and len(progress) == 1, (
            f"{len(progress)} progress line for 1 epoch, {codes} escape codes or carriage returns "
            f"in {len(text)} characters of log"
        )

    add("train-log-not-a-terminal", [], expect="ok", run=logged, check=one_line_per_epoch,
        shown="(set-up) train.py --data W/data/kaggle ... --out W/runs/a, stdout piped")  # fmt: skip

    def modes(folder: Path, names: Sequence[str], want: int) -> Callable[[Outcome], tuple[bool, str]]:
        def check(outcome: Outcome) -> tuple[bool, str]:
            found = {name: stat.S_IMODE((folder / name).stat().st_mode) for name in names}
            wrong = {name: f"{mode:o}" for name, mode in found.items() if mode != want}
            return not wrong, f"{len(found)} files {want:o}" + (f"; other: {wrong}" if wrong else "")

        return check

    def nothing(case: Case) -> Outcome:  # a check of files the set-up wrote
        return Outcome(0, "", "", 0.0)

    exported_files = ("decoder.onnx", "encoder.onnx", "config.json", "latent_density.json")
    add("modes-export-umask-022", [], expect="ok", run=nothing, check=modes(s.exp_a, exported_files, 0o644),
        shown="(set-up) export_onnx.py --run W/runs/a --out W/exp/a under umask 022")  # fmt: skip
    add("modes-export-umask-027", [], expect="ok", run=nothing, check=modes(s.exp_b, exported_files, 0o640),
        shown="(set-up) export_onnx.py --run W/runs/b --out W/exp/b under umask 027")  # fmt: skip
    run_files = ("config.json", "encoder.keras", "decoder.keras", "history.csv", "loss_curves.png",
                 "latent_density.json", "samples/epoch_001.png", "reconstructions/epoch_001.png",
                 "checkpoint/epoch_001.weights.h5")  # fmt: skip
    add("modes-run-umask-022", [], expect="ok", run=nothing, check=modes(s.run_a, run_files, 0o644),
        shown="(set-up) train.py ... --out W/runs/a under umask 022")  # fmt: skip
    return cases + generate_output_cases(s) + data_file_cases(s) + stop_tf_config_and_memory_cases(s)


def generate_output_cases(s: Survey) -> list[Case]:
    """generate.py: an --out of an unknown image type or one the command reads (by any name), and
    damaged JSON files of the model folder (a NaN gave black faces, a list AttributeError)."""
    folder = s.case_dir("gen-outputs")
    face, run = folder / "face.jpg", folder / "exp"
    reconstruct = ["generate.py", "--run", run, "--mode", "reconstruct", "--no-align", "--images", face, "--out"]

    def prepare() -> None:
        copy(s.exp_a, run)
        copy(s.files / "source.jpg", face)
        for link in ("link.jpg", "config.png", "decoder.png"):
            (folder / link).unlink(missing_ok=True)
        (folder / "link.jpg").symlink_to(face)
        (folder / "config.png").symlink_to(run / "config.json")
        os.link(run / "decoder.onnx", folder / "decoder.png")

    def jpeg(outcome: Outcome) -> tuple[bool, str]:
        magic = (s.out("gen-out-jpg") / "grid.jpg").read_bytes()[:3]
        return magic == b"\xff\xd8\xff", f"the file starts with {magic!r} (JPEG: b'\\xff\\xd8\\xff')"

    data_file = s.kaggle / "img_align_celeba" / "img_align_celeba" / "000003.jpg"
    cases = [
        Case("gen-out-gif", [*reconstruct, s.out("gen-out-gif") / "grid.gif"]),
        Case("gen-out-jpg", [*reconstruct, s.out("gen-out-jpg") / "grid.jpg"], expect="ok", check=jpeg),
        Case("gen-out-is-input", [*reconstruct, face]),
        Case("gen-out-symlink-to-input", [*reconstruct, folder / "link.jpg"]),
        Case("gen-out-symlink-to-config", [*reconstruct, folder / "config.png"]),
        Case("gen-out-hardlink-to-decoder", [*reconstruct, folder / "decoder.png"]),
        Case("gen-out-data-file", [*reconstruct, data_file, "--data", s.kaggle]),
    ]
    for case in cases:
        case.prepare = prepare
    nan, words = [float("nan")] * 8, ["up"] * 8
    smiling = {"direction": [0.1] * 8, "positives": 9, "negatives": 9, "held": ["Male"]}
    for name, file, content in [
        ("directions-nan", "attribute_directions.json", {"Smiling": {**smiling, "direction": nan}}),
        ("directions-words", "attribute_directions.json", {"Smiling": {**smiling, "direction": words}}),
        ("directions-list", "attribute_directions.json", [smiling]),
        ("density-nan", "latent_density.json", None),
    ]:
        target = s.case_dir(f"gen-{name}") / "exp"

        def damage(target: Path = target, file: str = file, content: object = content) -> None:
            path = copy(s.exp_a, target) / file
            if content is None:  # the density: one mean made NaN
                density = json.loads(path.read_text())
                density["means"][0][0] = float("nan")
                path.write_text(json.dumps(density))
            else:
                attributes = {"format": "celeba-vae-attributes/2", "latent_dim": 8, "attributes": content}
                path.write_text(json.dumps(attributes))

        mode = "sample" if file == "latent_density.json" else "attribute"
        out = s.out(f"gen-{name}") / "grid.png"
        cases.append(
            Case(f"gen-{name}", ["generate.py", "--run", target, "--mode", mode, "--out", out], prepare=damage)
        )
    for case in cases:
        case.argv = [str(part) for part in case.argv]
    return cases


def stop_tf_config_and_memory_cases(s: Survey) -> list[Case]:
    """Ctrl-C during training (once: backed up, exit 130; twice: at once), a malformed TF_CONFIG,
    and runs that cannot fit in memory: each refused or stopped in one line, quickly."""
    new = ["train.py", "--data", s.kaggle, *TINY_MODEL]

    def with_tf_config(value: str) -> Callable[[Case], Outcome]:
        def run(case: Case) -> Outcome:
            saved, s.env = s.env, {**s.env, "TF_CONFIG": value}
            try:
                return s.command(case.argv)
            finally:
                s.env = saved

        return run

    def ctrl_c(times: int) -> Callable[[Case], Outcome]:
        def run(case: Case) -> Outcome:
            started = time.perf_counter()
            process = s.start(case.argv)
            backup = Path(case.argv[case.argv.index("--out") + 1]) / "checkpoint" / "backup" / "checkpoint"
            while not backup.exists() and process.poll() is None and time.perf_counter() - started < s.timeout:
                time.sleep(0.05)
            for _ in range(times):
                process.send_signal(signal.SIGINT)
                time.sleep(0.3)  # the first one is handled before the second arrives
            outcome = s.finish(process, started, s.timeout)
            if outcome.exit == -signal.SIGINT:  # the second one ended Python's own teardown: a shell says 130
                outcome.exit = 128 + signal.SIGINT
            return outcome

        return run

    def stopped(first: str) -> Callable[[Outcome], tuple[bool, str]]:
        def check(outcome: Outcome) -> tuple[bool, str]:
            last = stderr_message(outcome.stderr)
            return last.startswith(first) and "--resume" in last, last[:160]

        return check

    def refused_quickly(outcome: Outcome) -> tuple[bool, str]:
        return outcome.seconds < 60, f"in {outcome.seconds:.1f} s"

    flags = ["--epochs", "500", "--backup-every", "1", "--batch-size", "2"]
    cases = [
        Case("ctrl-c-once", [*new, *flags, "--out", s.out("ctrl-c-once")], expect="ok", status=130,
             run=ctrl_c(1), check=stopped("stopped by Ctrl-C in epoch ")),
        Case("ctrl-c-twice", [*new, *flags, "--out", s.out("ctrl-c-twice")], expect="ok", status=130,
             run=ctrl_c(2), check=stopped("stopped ")),
        Case("memory-latent-100000", [*new, "--latent", "100000", "--out", s.out("memory-latent")],
             check=refused_quickly),
        Case("memory-image-size-4096", [*new, "--image-size", "4096", "--cache", "none", "--out", s.out("memory-4096")],
             check=refused_quickly),
    ]  # fmt: skip
    for name, value in {
        "not-json": '{"cluster": ',
        "worker-not-a-list": '{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}',
        "index-beyond-the-workers": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
        "task-a-list": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": [0]}',
    }.items():
        argv = [*new, "--strategy", "multiworker", "--out", s.out(f"tf-config-{name}")]
        cases.append(Case(f"tf-config-{name}", argv, run=with_tf_config(value), shown=f"TF_CONFIG={value!r} ..."))
    return cases


def data_file_cases(s: Survey) -> list[Case]:
    """Image files training must read as generate.py does or name as skipped, names that are not
    UTF-8 under LANG=C, and latent.py refusing before encoding what would fail after it."""
    odd = s.case_dir("data-odd-files")

    def odd_files() -> None:
        write_faces(odd, ["face.jpg", "face.png"])
        face_image(np.random.default_rng(6)).save(odd / "face.webp")
        (odd / os.fsdecode(b"\xffname.jpg")).write_bytes((odd / "face.jpg").read_bytes())
        (odd / "photo.heic").write_bytes(b"\0" * 64)

    def under_c_locale(case: Case) -> Outcome:
        started, environment = time.perf_counter(), {**s.env, "LANG": "C", "LC_ALL": "C"}
        done = subprocess.run(
            [sys.executable, str(REPO / "data.py"), "--data", str(odd)],
            cwd=s.cwd, env=environment, capture_output=True, text=True, errors="replace", timeout=s.timeout,
        )  # fmt: skip
        return Outcome(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)

    def all_read_or_named(outcome: Outcome) -> tuple[bool, str]:
        found = re.search(r": (\d+) images", outcome.stdout)
        named = "photo.heic" in outcome.stderr and "mogrify -format png" in outcome.stderr
        return bool(
            found and found.group(1) == "4" and named
        ), f"{found and found.group(1)} of 4 images read; .heic named"

    density_folder = s.case_dir("latent-density-is-a-folder") / "exp"

    def density_folder_case() -> None:
        copy(s.exp_a, density_folder)
        (density_folder / "latent_density.json").unlink()
        (density_folder / "latent_density.json").mkdir()

    def before_encoding(outcome: Outcome) -> tuple[bool, str]:
        return "encoded" not in outcome.stdout, "refused before encoding any image"

    return [
        Case("data-odd-files-c-locale", [], expect="ok", prepare=odd_files, run=under_c_locale,
             check=all_read_or_named, shown="LANG=C data.py --data W/cases/data-odd-files (webp, heic, \\xff name)"),
        Case("latent-density-is-a-folder", ["latent.py", "--run", str(density_folder)], prepare=density_folder_case,
             check=before_encoding),
        Case("latent-too-few-images", ["latent.py", "--run", str(s.exp_a), "--components", "64"],
             check=before_encoding),
    ]  # fmt: skip


# ---------------------------------------------------------------------- report
def table(records: list[Record]) -> str:
    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| case | command | exit | one-line message | traceback? | files touched? | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for record in records:
        if record.skipped:
            lines.append(f"| {record.name} | `{cell(record.command)}` | | skipped: {cell(record.skipped)} | | | skip |")
            continue
        touched = (
            "; ".join(record.touched[:3]) + (" ..." if len(record.touched) > 3 else "") if record.touched else "no"
        )
        result = "pass" if not record.problems else "FAIL: " + "; ".join(record.problems)
        lines.append(
            f"| {record.name} | `{cell(record.command)}` | {record.exit} | {cell(record.message)} | "
            f"{'yes' if record.traceback else 'no'} | {cell(touched)} | {cell(result)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--work", type=Path, help="scratch folder, new or empty, kept (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary scratch folder")
    parser.add_argument("--json", type=Path, help="also write the records to this JSON file")
    parser.add_argument("--only", nargs="+", metavar="PATTERN", help="run only the cases matching these patterns")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds a command may take")
    args = parser.parse_args(argv)
    if args.work is not None:
        work = args.work.resolve()
        for protected in (REPO, SHARED):
            if work == protected or protected in work.parents:
                parser.error(f"--work {args.work} lies in {protected}; give a scratch folder elsewhere")
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            parser.error(f"--work {args.work} exists and is not an empty folder; give a new one")
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="bad-inputs-"))

    print("\n".join(machine_lines()))
    print(f"scratch folder: {work}")
    started = time.perf_counter()
    survey = Survey(work, args.timeout)
    try:
        survey.build()
        print(f"set-up (fixtures, two tiny runs, two exports): {time.perf_counter() - started:.0f} s")
        disk_problem = survey.mount_disk()
        cases = build_cases(survey, disk_problem)
        if args.only:
            cases = [case for case in cases if any(fnmatch.fnmatch(case.name, p) for p in args.only)]
        records = []
        for case in cases:
            record = run_case(case, survey)
            records.append(record)
            verdict = "skip" if record.skipped else ("pass" if not record.problems else "FAIL")
            print(f"  {verdict:4} {record.seconds:5.1f} s  {record.name}: {record.message[:110]}", flush=True)
    finally:
        survey.unmount_disk()
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started

    print()
    print(table(records))
    failed = [record for record in records if record.problems]
    skipped = [record for record in records if record.skipped]
    expected_errors = [r for r, c in zip(records, cases, strict=True) if c.expect == "error" and not r.skipped]
    print()
    print(
        f"{len(records)} cases ({len(expected_errors)} bad inputs and faults, {len(records) - len(expected_errors) - len(skipped)} "
        f"checks of a result): {len(records) - len(failed) - len(skipped)} passed, {len(failed)} failed, "
        f"{len(skipped)} skipped; {sum(r.traceback for r in records)} tracebacks, "
        f"{sum(bool(r.touched) for r in records)} touched files; {seconds / 60:.1f} min in all"
    )
    if args.json:
        args.json.write_text(json.dumps([record.__dict__ for record in records], indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
