"""runs.py and what every script shares: config.json checks, output checks before any work,
file modes of atomic writes, and --help / argument errors without TensorFlow."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

import evaluate
import export_onnx
import generate
import images
import inference
import runs
from errors import run_main

PRETRAINED = REPO / "pretrained" / "celeba64"
CONFIG = {"format": runs.RUN_FORMAT, "latent_dim": 8, "image_size": 16, "channels": 3, "crop": 148}


def exit_message(main, argv: list[str], capsys) -> str:
    """A script's error as `python SCRIPT.py` reports it (through errors.run_main); asserts it is
    one line starting with 'error: ' and a non-zero exit. A main that exits by itself with its
    message (sys.exit("error: ...")) is taken as well."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(argv))
    code, printed = exit_info.value.code, capsys.readouterr().err
    message = code if isinstance(code, str) else printed.removesuffix("\n")
    assert code and message.startswith("error: ") and "\n" not in message, (code, printed)
    return message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_size": None}, "image_size is missing"),
        ({"latent_dim": "8"}, "latent_dim is '8', not a positive whole number"),
        ({"channels": 0, "image_size": 16.5}, "image_size is 16.5, not a positive whole number; channels is 0"),
        ({"crop": -1}, "crop is -1, not a whole number of 0 or more"),
    ],
)
def test_config_without_sizes_is_one_line_in_every_script(tmp_path, capsys, change, message):
    config = {key: value for key, value in {**CONFIG, **change}.items() if value is not None}
    keras_run, onnx_run = tmp_path / "keras", tmp_path / "onnx"
    for folder in (keras_run, onnx_run):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
    (keras_run / "decoder.keras").write_bytes(b"never loaded")
    (onnx_run / "decoder.onnx").symlink_to(PRETRAINED / "decoder.onnx")
    with pytest.raises(runs.RunFolderError, match=message):
        runs.read_config(keras_run)
    for run in (keras_run, onnx_run):
        assert message in exit_message(generate.main, ["--run", str(run), "--mode", "sample"], capsys)
        assert message in exit_message(evaluate.main, ["--run", str(run), "--data", str(tmp_path)], capsys)
    assert "restore the config.json train.py wrote" in exit_message(export_onnx.main, ["--run", str(keras_run)], capsys)


def no_work(*args, **kwargs):
    raise AssertionError("the output must be checked before any model or data is loaded")


@pytest.fixture
def unloadable_run(tmp_path, monkeypatch) -> Path:
    """A run folder whose models cannot be loaded, with loading models, opening a backend and
    evaluating made to fail the test: the scripts must refuse their --out before any of that."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(CONFIG))
    for name in ("encoder.keras", "decoder.keras"):
        (run / name).write_bytes(b"never loaded")
    monkeypatch.setattr(export_onnx, "load_models", no_work)
    monkeypatch.setattr(runs, "open_backend", no_work)
    monkeypatch.setattr(evaluate, "evaluate", no_work)
    return run


def test_unusable_out_is_refused_before_any_work(unloadable_run, tmp_path, capsys):
    run = unloadable_run
    a_file = tmp_path / "file"
    a_file.write_text("keep me")

    export = ["--run", str(run), "--out"]
    assert f"--out {a_file} is a file; give a folder path" in exit_message(
        export_onnx.main, [*export, str(a_file)], capsys
    )
    assert f"lies below {a_file}, which is a file" in exit_message(
        export_onnx.main, [*export, str(a_file / "x")], capsys
    )
    sample = ["--run", str(run), "--mode", "sample", "--out"]
    assert f"--out {tmp_path} is a folder; give a file path" in exit_message(
        generate.main, [*sample, str(tmp_path)], capsys
    )
    assert "which is a file" in exit_message(generate.main, [*sample, str(a_file / "grid.png")], capsys)
    (tmp_path / "grid").write_text("keep me too")
    message = exit_message(generate.main, [*sample, str(tmp_path / "grid.png"), "--save-individual"], capsys)
    assert f"--save-individual writes into {tmp_path / 'grid'}, which is a file" in message
    evaluation = ["--run", str(run), "--out"]
    assert "which is a file" in exit_message(evaluate.main, [*evaluation, str(a_file / "sub" / "eval.json")], capsys)
    assert "is a folder" in exit_message(evaluate.main, [*evaluation, str(tmp_path)], capsys)
    assert a_file.read_text() == "keep me" and (tmp_path / "grid").read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "grid", "run"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_where_nothing_can_be_created_is_refused_before_any_work(unloadable_run, capsys):
    """/proc takes no new files, not even from root, whom os.access lets write anywhere."""
    run = unloadable_run
    cannot = Path("/proc/celeba-vae-test")
    refused = rf"^error: --out {cannot}/\S+: (/proc is not writable|cannot write in /proc \(.+\)); give another --out$"
    for main, argv in (
        (export_onnx.main, ["--run", str(run), "--out", str(cannot / "exp")]),
        (generate.main, ["--run", str(run), "--mode", "sample", "--out", str(cannot / "x.png")]),
        (evaluate.main, ["--run", str(run), "--out", str(cannot / "eval.json")]),
    ):
        message = exit_message(main, argv, capsys)
        assert re.match(refused, message), message


def test_out_over_an_input_or_a_model_file_is_refused_before_any_work(unloadable_run, tmp_path, capsys):
    run = unloadable_run
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(CONFIG))
    (other / "decoder.keras").write_text("another run's model")
    (run / "checkpoint").mkdir()
    export = ["--run", str(run), "--out"]
    message = exit_message(export_onnx.main, [*export, str(other)], capsys)
    assert f"--out {other} is the folder of another train.py run, whose config.json the export would" in message
    assert f"lies in {run / 'checkpoint'}, which train.py keeps" in exit_message(
        export_onnx.main, [*export, str(run / "checkpoint" / "onnx")], capsys
    )
    link = tmp_path / "link"
    link.symlink_to(run)
    evaluation = ["--run", str(run), "--out"]
    for out, part in (
        (run / "config.json", run / "config.json"),
        (run / "decoder.keras", run / "decoder.keras"),
        (link / "encoder.keras", run / "encoder.keras"),  # through a link to the folder
        (run / "checkpoint" / "eval.json", run / "checkpoint"),
        (other / "latent_density.json", other / "latent_density.json"),  # not there yet, still the run's
    ):
        message = exit_message(evaluate.main, [*evaluation, str(out)], capsys)
        assert message == (
            f"error: --out {out} would overwrite {part}, part of the model folder {part.parent}; give another --out"
        )
    assert (run / "config.json").read_text() == json.dumps(CONFIG)
    assert (other / "decoder.keras").read_text() == "another run's model" and not (run / "checkpoint" / "onnx").exists()
    assert runs.check_output_path(run / "eval_test.json") == run / "eval_test.json"  # the default output is fine
    assert runs.check_output_path(run / "generated" / "sample.png") == run / "generated" / "sample.png"
    (tmp_path / "a.png").write_bytes(b"a face")
    os.link(tmp_path / "a.png", tmp_path / "hard.png")
    for out in (tmp_path / "a.png", tmp_path / "hard.png"):  # the input by another name, or a hard link
        with pytest.raises(runs.RunFolderError, match=rf"--out {out} would overwrite the input .*a.png"):
            runs.check_output_path(out, inputs=[tmp_path / "b.png", link / ".." / "a.png"])
    assert runs.check_output_path(tmp_path / "new.png", inputs=[tmp_path / "a.png"]) == tmp_path / "new.png"
    (tmp_path / "config.json").write_text('{"some": "other program"}')  # no model folder
    assert runs.check_output_path(tmp_path / "config.json") == tmp_path / "config.json"


def test_out_checks_compare_names_as_case_insensitive_systems_do_and_see_through_links(unloadable_run, tmp_path):
    """run/Config.json is config.json where names are case-insensitive (macOS, Windows), so it is
    refused everywhere; and a run/generated that is a link into a data folder is no place of the
    command's own outputs: a face file there is an input, never overwritten."""
    run = unloadable_run
    for name in ("Config.json", "DECODER.KERAS", "Checkpoint/x.json"):
        with pytest.raises(runs.RunFolderError, match=r"would overwrite .*part of the model folder"):
            runs.check_output_path(run / name)
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "sample.png").write_bytes(b"someone's face")
    linked = tmp_path / "linked_run"
    linked.mkdir()
    (linked / "generated").symlink_to(faces)
    with pytest.raises(runs.RunFolderError, match="would overwrite a file of .*faces, which this command reads"):
        runs.check_output_path(linked / "generated" / "sample.png", [faces, linked], [linked / "generated"])
    own = tmp_path / "own_run"
    (own / "generated").mkdir(parents=True)
    (own / "generated" / "sample.png").write_bytes(b"an earlier grid")
    assert runs.check_output_path(own / "generated" / "sample.png", [faces, own], [own / "generated"])


@pytest.mark.parametrize("module", ["runs.py", "recipe.py", "images.py", "inference.py", "image_files.py", "errors.py"])
def test_a_library_module_run_as_a_script_says_what_to_run(module):
    result = subprocess.run([sys.executable, module], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {module} is a library module; run train.py, generate.py, evaluate.py, export_onnx.py, "
        "latent.py or align.py (each has --help)"
    ]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_usual_file_mode(tmp_path, umask):
    """Not mkstemp's 0600: 0666 less the umask, like any new file, so others can read models and pictures."""
    import epoch_log  # its loss-curve PNG goes through the same helper

    previous = os.umask(umask)
    try:
        runs.write_text_atomic(tmp_path / "config.json", "{}\n")
        images.save_image(Image.new("RGB", (4, 4)), tmp_path / "grid" / "grid.png")
        epoch_log.plot_history([{"epoch": 1, "loss": 1.0}], tmp_path / "loss_curves.png")
        images.write_together({tmp_path / "copied.json": partial(shutil.copyfile, tmp_path / "config.json")})
        with pytest.raises(OSError), images.atomic_write(tmp_path / "failed.txt") as temporary:
            temporary.write_text("half")
            raise OSError("disk full")
    finally:
        os.umask(previous)
    written = ["config.json", "grid/grid.png", "loss_curves.png", "copied.json"]
    assert {name: (tmp_path / name).stat().st_mode & 0o777 for name in written} == dict.fromkeys(
        written, 0o666 & ~umask
    )
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(Path(n).name for n in written)


def test_negative_seed_of_latent_py_is_an_argument_error(capsys):
    import latent

    with pytest.raises(SystemExit) as exit_info:
        latent.main(["--run", str(PRETRAINED), "--seed", "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("error: --seed must not be negative (got -1)")


@pytest.mark.parametrize("script", ["generate.py", "evaluate.py", "export_onnx.py", "latent.py"])
def test_help_and_argument_errors_are_instant_and_import_no_tensorflow(script):
    code = f"""
import runpy, sys, time
for argv in (["--help"], ["--no-such-flag"]):
    sys.argv = [{script!r}, *argv]
    started = time.perf_counter()
    try:
        runpy.run_path({script!r}, run_name="__main__")
    except SystemExit as error:
        print("EXIT", error.code, f"{{time.perf_counter() - started:.2f}}")
print("LOADED", sorted({{m.split(".")[0] for m in sys.modules}} & {{"tensorflow", "keras", "tf2onnx", "onnx"}}))
"""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - started
    lines = result.stdout.splitlines()
    assert "LOADED []" in lines, result.stdout[-500:] + result.stderr[-2000:]
    assert [line.split()[:2] for line in lines if line.startswith("EXIT")] == [["EXIT", "0"], ["EXIT", "2"]]
    assert "usage:" in result.stdout and "--help" in result.stdout
    # argparse's usage and error only: no start-up lines from TensorFlow or anything else
    errors = result.stderr.strip().splitlines()
    assert errors[0].startswith("usage:") and errors[-1].startswith(f"{script}: error: "), result.stderr
    assert sum("error" in line for line in errors) == 1, result.stderr
    assert seconds < 10, f"{script} --help took {seconds:.1f} s"  # TensorFlow's import alone takes longer here


def test_onnx_pair_of_different_exports_is_refused(tmp_path):
    """An encoder of one export beside a decoder of another: refused when the encoder is needed."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "decoder.onnx").symlink_to(PRETRAINED / "decoder.onnx")
    (mixed / "encoder.onnx").symlink_to(PRETRAINED / "encoder.onnx")
    backend = runs.open_backend(mixed)
    assert backend.encode(np.zeros((1, 64, 64, 3))) is not None  # both from one (older) export, without an id
    decoder = {"export_id": "a" * 16, "source_run": "run_a", "latent_dim": "8"}
    assert inference.pair_mismatch(decoder, dict(decoder)) == ""
    assert inference.pair_mismatch(decoder, {**decoder, "export_id": "b" * 16}) == (
        f"export_id {'a' * 16!r} vs {'b' * 16!r}"
    )
    assert "source_run 'run_a' vs None" in inference.pair_mismatch(decoder, {"latent_dim": "8"})


def test_progress_in_a_log_file_prints_a_line_now_and_then(capsys):
    """Not a terminal under pytest: no carriage returns, a line per `log_every`, a final line."""
    chatty = runs.Progress(10, "encoded", log_every=0.0)
    for _ in range(2):
        chatty.add(5)
    chatty.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["encoded 5 of 10 images", "encoded 10 of 10 images"]
    assert lines[2].startswith("encoded 10 of 10 images in ") and len(lines) == 3
    quiet = runs.Progress(10, "encoded", log_every=3600.0)
    quiet.add(10)
    quiet.close()
    assert [line.split(" in ")[0] for line in capsys.readouterr().out.splitlines()] == ["encoded 10 of 10 images"]
    runs.Progress(10, "encoded", enabled=False).close()
    assert capsys.readouterr().out == "" and "\r" not in "".join(lines)


def test_progress_says_how_long_is_left_from_the_rate_so_far(capsys, monkeypatch):
    clock = iter([0.0, 60.0, 600.0])  # started; then the times of the two updates
    monkeypatch.setattr(runs.time, "perf_counter", lambda: next(clock))
    progress = runs.Progress(1000, "aligned", log_every=0.0)
    progress.add(100)  # 100 images in 60 s: 900 more take 9 min
    progress.add(400)  # 500 in 600 s: 500 more take 10 min
    assert capsys.readouterr().out.splitlines() == [
        "aligned 100 of 1000 images, about 9 min to go",
        "aligned 500 of 1000 images, about 10 min to go",
    ]


def import_graph(folder: Path) -> dict[str, set[str]]:
    """module -> the top-level modules of `folder` it imports, anywhere in its code (inside
    functions too, where an import runs later but still closes a cycle)."""
    modules = {path.stem: path for path in folder.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
        graph[name] = imported & set(modules)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (the strongly
    connected components of more than one module, or of one that imports itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1 or module in graph[module]:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_import_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}, "e": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["d"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_the_scripts():
    graph = import_graph(REPO)
    assert {"runs", "export_onnx", "inference", "latent", "data"} <= set(graph)
    assert graph["inference"] <= {"errors"}, graph["inference"]  # numpy and onnxruntime only
    assert import_cycles(graph) == []


def test_keras_loads_without_tensorflow_start_up_noise():
    """What generate.py, evaluate.py, export_onnx.py and latent.py print when they load a .keras
    model: TensorFlow's C++ start-up lines once at most, no information lines, and no cuInit error
    on a machine without an NVIDIA driver."""
    code = "import runs; runs.import_keras(); print('LOADED')"
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=environment
    )
    assert result.stdout.strip() == "LOADED", result.stderr
    lines = result.stderr.splitlines()
    assert not [line for line in lines if line.startswith("I0000") or "absl::InitializeLog" in line], lines
    assert len(lines) == len(set(lines)), lines
    if not Path("/proc/driver/nvidia").exists():
        assert "cuInit" not in result.stderr
