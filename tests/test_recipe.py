"""recipe.py's settings table and the command line and config.json built from it (no TensorFlow)."""

from __future__ import annotations

import json
import re

from helpers import REPO

import recipe
import train_cli


def test_a_run_given_only_data_writes_the_default_recipe(tmp_path):
    """What argparse defaults to, through train_cli's conversions, is what DEFAULT_RECIPE says."""
    _, config = train_cli.checked_config(["--data", str(tmp_path), "--out", str(tmp_path / "run")])
    recorded = {key: value for key, value in config.items() if key in recipe.DEFAULT_RECIPE}
    assert json.loads(json.dumps(recorded)) == {**recipe.DEFAULT_RECIPE, "data": str(tmp_path)}


def test_the_resume_help_names_the_flags_resume_takes():
    resume = next(setting for setting in recipe.SETTINGS if setting.flag == "--resume")
    named = set(re.findall(r"--[a-z-]+", resume.help))
    phase = {setting.flag for setting in recipe.SETTINGS if setting.name in recipe.DISCRIMINATOR_SETTINGS}
    assert named == ({setting.flag for setting in recipe.SETTINGS if setting.on_resume} | phase) - {"--resume"}


def test_the_flag_table_of_docs_training_shows_the_defaults_train_py_has():
    table = re.findall(r"^\| `(--[a-z-]+)[^|]*\| ([^|]*) \|", (REPO / "docs" / "training.md").read_text(), re.M)
    shown = {flag: cell.strip("` ").split(" ")[0] for flag, cell in table}
    compared = 0
    for setting in recipe.SETTINGS:
        if setting.default is None or not shown.get(setting.flag):
            continue  # required, or a default said in words
        default = setting.default
        if isinstance(default, bool):
            assert shown[setting.flag] == ("on" if default else "off"), setting.flag
        elif isinstance(default, (int, float)):
            assert float(shown[setting.flag]) == default, setting.flag
        else:
            assert shown[setting.flag] == (",".join(map(str, default)) if isinstance(default, list) else default)
        compared += 1
    assert compared >= 25
