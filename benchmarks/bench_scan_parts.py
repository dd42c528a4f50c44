"""Time the parts of mvgpt::SelectiveScan alone, their data in cache (x86-64 with AVX2 + FMA).

Compiles scan_parts.cc against kernels/ with $CXX (default g++) -O3, runs it rounds times and
keeps each part's best: the AVX2 state-lane path's recurrence (per 8-lane vector update, N = 16,
the in-range decay), its preparation (softplus(delta + bias), dt * u) and its output
((y + D u) silu(z)), each per 8 steps of one channel, and, where the CPU has AVX-512, the
channel-lane recurrence (per 16-lane vector update). Each is set against the FMA floor of
floors.py (SCAN_FMA_OPS FMA-pipe operations per state update at the FMA peak measured now, one
thread): x floor for the recurrences, and for the other parts the share of the 16 vector updates
that the same 8 steps of a channel cost at the floor. Cycles assume two FMA pipes (the peak over
2 x lanes is the clock). What bench_scan.py's whole op adds to the parts is memory and the loops
around them.

    python benchmarks/bench_scan_parts.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, environment, fmt, print_table  # noqa: E402
from floors import SCAN_FMA_OPS, measure_fma_peak  # noqa: E402

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "scan_parts.cc"
KERNELS = HERE.parent / "kernels"
# part -> (instruction set, lanes, vector updates of the floor per unit)
PARTS = {
    "recur_lanes": ("avx2", 8, 1),
    "prep_lanes": ("avx2", 8, 16),
    "finish_lanes": ("avx2", 8, 16),
    "recur16": ("avx512", 16, 1),
}


def run_parts(rounds: int) -> dict[str, tuple[float, str]]:
    """{part: (best ns per unit, unit)} over `rounds` runs of the compiled scan_parts."""
    compiler = os.environ.get("CXX", "g++")
    best: dict[str, tuple[float, str]] = {}
    with tempfile.TemporaryDirectory(prefix="scan_parts-") as tmp:
        exe = Path(tmp) / "scan_parts"
        build = [compiler, "-O3", "-std=c++17", "-I", str(KERNELS), str(SOURCE), "-o", str(exe)]
        for cmd in [build] + [[str(exe)]] * rounds:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise SystemExit(f"bench_scan_parts: '{cmd[0]}' failed: {e}") from e
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
                raise SystemExit(f"bench_scan_parts: '{cmd[0]}' exited {done.returncode}: {last}")
            for line in done.stdout.splitlines():
                name, ns, unit = line.split()
                if name not in best or float(ns) < best[name][0]:
                    best[name] = (float(ns), unit)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of the program (best kept)")
    args = parser.parse_args(argv)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print("bench_scan_parts: x86-64 only (the AVX2 and AVX-512 paths)", file=sys.stderr)
        return 1
    if args.rounds < 1:
        print("bench_scan_parts: --rounds must be at least 1", file=sys.stderr)
        return 1
    parts = run_parts(args.rounds)
    peaks = {isa: measure_fma_peak(isa, 1) for isa in {PARTS[p][0] for p in parts}}
    common = environment(1, {})
    rows = []
    for name, (ns, unit) in parts.items():
        isa, lanes, updates = PARTS[name]
        peak = peaks[isa]  # lane-FMAs per second
        floor_ns = updates * SCAN_FMA_OPS * lanes / peak * 1e9
        cycles = ns * 1e-9 * peak / (2 * lanes)
        row = {"bench": "scan_parts", "part": name, "isa": isa, "unit": unit, "ns": ns}
        row |= {"cycles": cycles, "floor_ns": floor_ns, "x_floor": ns / floor_ns}
        row |= {"fma_lanes_per_s": peak, "floor_fma_ops_per_update": SCAN_FMA_OPS}
        emit(row | common)
        rows.append((name, isa, unit, ns, cycles, ns / floor_ns))
    print_table(
        [("part", 13), ("isa", 7), ("per", 14), ("ns", 8), ("cycles", 7), ("x floor", 8)],
        [[n, i, u, fmt(ns, ".3f"), fmt(c, ".1f"), fmt(x, ".2f")] for n, i, u, ns, c, x in rows],
    )
    print(
        f"x floor: against {SCAN_FMA_OPS} FMA-pipe ops per state update at the FMA peak measured "
        "now; for prep/finish, against the 16 vector updates of the same 8 steps of a channel"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
