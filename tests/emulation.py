"""Running code on CPUs this machine may lack, under qemu's user-mode emulation.

Owns the Debian packages the emulated tests need (installed with apt-get when missing and
running as root, else the tests say why and skip), the CPU models used, and running this
Python - the same interpreter, site-packages and mvgpt - on an emulated x86-64 CPU. Also hands
the tests benchmarks/avx2_view.py (``cpu_view``): this CPU natively, with AVX-512 or VNNI hidden.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = {  # command -> the Debian package holding it
    "qemu-aarch64": "qemu-user",
    "qemu-x86_64": "qemu-user",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "clang++": "clang",
}
AVX2_CPU = "Haswell-noTSX"  # AVX2 + FMA, no AVX-512, no VNNI (qemu >= 7.2 emulates AVX2)


def qemu_x86(cpu: str) -> list[str]:
    """The command prefix that runs an x86-64 program on qemu's CPU model `cpu`. The emulated
    program gets no LD_PRELOAD (nor does ARM's): a native preload - benchmarks/avx2_view.py's,
    when the tests run under it - is for the host's processes, not the guest's."""
    return ["qemu-x86_64", "-U", "LD_PRELOAD", "-cpu", cpu]


HASWELL = qemu_x86(AVX2_CPU)
ARM = ["qemu-aarch64", "-U", "LD_PRELOAD", "-L", "/usr/aarch64-linux-gnu"]
EMULATED_TIMEOUT_S = 600

_installed: dict[str, str] = {}  # apt-get runs once per package set: its error, or ""


def missing_tools(*commands: str) -> str:
    """Why ``commands`` cannot run ("" when they are on PATH, after installing their Debian
    packages when missing and running as root)."""
    missing = [c for c in commands if shutil.which(c) is None]
    if not missing:
        return ""
    packages = sorted({PACKAGES[c] for c in missing})
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{', '.join(missing)} missing (not root with apt-get): install {' '.join(packages)}"
    key = " ".join(packages)
    if key not in _installed:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        run = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if run.returncode != 0:  # package lists absent or stale
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            run = subprocess.run(cmd, capture_output=True, text=True, env=env)
        _installed[key] = run.stderr.strip()[-300:] if run.returncode != 0 else ""
    if still := [c for c in commands if shutil.which(c) is None]:
        return f"{', '.join(still)} missing after apt-get install {key}: {_installed[key]}"
    return ""


def run_python(args: list[str], cpu: str | None = None, env: dict | None = None) -> str:
    """Run this interpreter with ``args`` (natively, or on the emulated x86-64 ``cpu`` model);
    returns its stdout, skips when qemu cannot be had, fails with its stderr when it fails."""
    prefix: list[str] = []
    if cpu is not None:
        if why := missing_tools("qemu-x86_64"):
            pytest.skip(why)
        prefix = qemu_x86(cpu)
    run = subprocess.run(
        [*prefix, sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=EMULATED_TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )
    assert run.returncode == 0, f"{' '.join(prefix)} python {' '.join(args)[:200]}:\n{run.stderr}"
    return run.stdout


def _load_cpu_view():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "avx2_view.py"
    spec = importlib.util.spec_from_file_location("avx2_view", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_view = _load_cpu_view()  # benchmarks/avx2_view.py: environment(view=...), unavailable()
