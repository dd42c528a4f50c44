"""Helpers shared by the benchmark scripts: the environment header of every JSON line, the timing
loop, median/min summaries, peak RSS, and the readable table printed after the JSON lines.

The scripts put this folder on ``sys.path`` (they are run as ``python benchmarks/bench_x.py``), so
it imports as ``common``. Nothing heavy is imported here: the scripts import onnxruntime, torch
and numpy inside ``main`` and pass the versions they loaded to ``environment``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def cpu_name() -> str:
    """The CPU model string of /proc/cpuinfo, or what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_view() -> str:
    """What benchmarks/avx2_view.py shows this process of the CPU: "avx2_view" (AVX-512, VNNI
    and AMX hidden from CPUID), "avx512-novnni_view" (its --view avx512-novnni), else "native"."""
    from avx2_view import current_view

    return current_view()


def reference_row(row: dict, rows: list[dict], name: str = "reference fp32") -> dict:
    """bench_e2e's baseline for `row`: the `name` configuration measured under the same CPU view
    ("reference fp32 [avx2_view]" for a row measured under avx2_view), else the first row."""
    view = row.get("cpu_view", "native")
    wanted = name + (f" [{view}]" if view != "native" else "")
    return next((r for r in rows if r["config"] == wanted), rows[0])


def cpu_flags(wanted: Sequence[str] = SIMD_FLAGS) -> list[str]:
    """The subset of `wanted` instruction-set flags this CPU reports (x86 Linux; [] elsewhere),
    less those avx2_view hides when it runs (/proc/cpuinfo still lists them)."""
    from avx2_view import visible_flags

    from mvgpt.runtime.package import cpu_flags as all_flags

    have = visible_flags(all_flags() or set(), cpu_view())
    return [w for w in wanted if w in have]


def commit() -> str:
    """The short git commit of the checkout these scripts live in ("unknown" outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def environment(
    threads: int, versions: dict[str, str], provider: str | None = None
) -> dict[str, Any]:
    """The fields every JSON line carries: host, cpu, python, the CPU's instruction-set flags and
    whether they are avx2_view's (cpu_view), library versions, threads, provider (when given) and
    commit, in that order."""
    env: dict[str, Any] = {
        "host": platform.node(),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "cpu_flags": cpu_flags(),
        "cpu_view": cpu_view(),
        **versions,
        "threads": threads,
    }
    if provider is not None:
        env["provider"] = provider
    env["commit"] = commit()
    return env


def time_it(fn: Callable[[], object], warmup: int, repeat: int) -> list[float]:
    """Seconds of each of `repeat` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: Sequence[float]) -> dict[str, float]:
    """{"median_s", "min_s"} of a list of seconds."""
    return {"median_s": statistics.median(times), "min_s": min(times)}


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """This process's resident set size now in MiB (VmRSS; NaN where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def emit(row: dict[str, Any]) -> None:
    """Print one measurement as a JSON line, flushed so a parent process sees it at once."""
    print(json.dumps(row), flush=True)


def print_table(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]]) -> None:
    """A blank line, then a header and rows: the first column left-aligned, the others right-
    aligned, to the widths given with the column names; cells are already formatted strings."""

    def line(cells: Sequence[str]) -> str:
        parts = [f"{cells[0]:<{columns[0][1]}}"]
        pairs = zip(cells[1:], columns[1:], strict=True)
        parts += [f"{cell:>{width}}" for cell, (_, width) in pairs]
        return " ".join(parts)

    print("\n" + line([name for name, _ in columns]))
    for row in rows:
        print(line(row))
    sys.stdout.flush()


def fmt(value: float | None, spec: str) -> str:
    """`value` formatted with `spec`, or "-" when it is None."""
    return "-" if value is None else format(value, spec)


def default_threads() -> int:
    return os.cpu_count() or 1
