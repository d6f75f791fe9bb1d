"""Provenance of a run: the hardware and library versions it ran on, and the command that made
it."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .protocol import EvalConfig

__all__ = ["command_line", "hardware"]


def hardware() -> dict[str, Any]:
    from importlib import metadata

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": version("torch"),
        "scipy": version("scipy"),
        "implicit": version("implicit"),
        "sentence_transformers": version("sentence-transformers"),
    }


def command_line(cfg: EvalConfig) -> str:
    if cfg.command:
        return cfg.command
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("readnext", "cli.py", "__main__.py"):
        argv = ["readnext", *argv[1:]]
    return shlex.join(argv)
