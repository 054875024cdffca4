"""What machine a benchmark ran on: CPU model, cores, bfloat16 instructions, platform, package versions, load.

Imported by the scripts in bench/; not run by itself.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

PACKAGES = ("tensorflow", "keras", "onnxruntime", "tf2onnx", "onnx", "numpy")


def cpuinfo(field: str) -> str | None:
    """The first value of `field` in /proc/cpuinfo, or None (no such field, or no /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def bfloat16_instructions() -> str:
    """The CPU's bfloat16 matrix instructions, which decide train.py's --mixed-precision auto."""
    flags = (cpuinfo("flags") or "").split()
    return ", ".join(flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags) or "none"


def machine_lines() -> list[str]:
    """Lines to print at the top of a benchmark's output."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs ({usable} usable), {platform.platform()}",
        f"bfloat16 instructions: {bfloat16_instructions()}",
        f"python {platform.python_version()}; " + ", ".join(versions),
        f"load average at start (1, 5, 15 min): {load}",
    ]
