"""Benchmark the selective scan at the VideoMamba-M shape (1, 1152, 16, 1569) by default.

Times, in one process on the same random inputs: the mvgpt::SelectiveScan C++ op in onnxruntime
once per instruction set (--isa, repeatable; default: every set the library finds on this CPU),
the sets interleaved round by round so that they share the machine's state; the portable ONNX Scan
graph in onnxruntime; and the torch reference (models/scan.py, eager). For each instruction set it
measures the FMA peak at that width with the same thread count (floors.measure_fma_peak, a C++
loop compiled now) and reports the FMA floor, state updates x floors.SCAN_FMA_OPS (the FMA-pipe
operations the math needs per update; floors.py says which) / that peak, and the time over it.
Prints one JSON line per implementation (median and min ms, state updates per second =
B*D*N*L / time, floor, host, versions, threads, commit), then a table.

    python benchmarks/bench_scan.py --threads 2 --rounds 5 --repeat 10
    python benchmarks/bench_scan.py --isa avx2 --isa avx512 --no-portable --no-torch
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, environment, fmt, print_table, time_it  # noqa: E402
from floors import SCAN_FMA_OPS, measure_fma_peak, scan_fma_floor  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the sets interleaved")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--isa", action="append", help="repeatable (default: all this CPU has)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--length", type=int, default=1569)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch reference")
    parser.add_argument("--no-portable", action="store_true", help="skip the portable Scan graph")
    args = parser.parse_args(argv)

    os.environ["MVGPT_SCAN_THREADS"] = str(args.threads)  # read when the kernel is created
    import numpy as np
    import onnx
    import onnxruntime as ort

    from mvgpt import kernels
    from mvgpt.kernels import portable
    from mvgpt.runtime.manifest import CUSTOM_OP_SCAN
    from mvgpt.runtime.sessions import library_available, session_options

    shape = (args.batch, args.dim, args.length, args.state)
    feeds = portable.random_inputs(*shape, True, True, True, seed=0)

    def make_session(model: onnx.ModelProto, custom: bool) -> ort.InferenceSession:
        options = session_options(args.threads, custom_op=CUSTOM_OP_SCAN if custom else None)
        return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])

    native: dict[str, Callable[[], object]] = {}  # instruction set -> one call
    if library_available():
        model = portable.scan_model(*shape, True, True, True, False)
        for isa in args.isa or kernels.cpu_isas():
            os.environ["MVGPT_SCAN_ISA"] = isa  # read when the session creates the kernel
            session = make_session(model, True)
            session.run(None, feeds)
            if kernels.last_isa("SelectiveScan") != isa:
                raise SystemExit(f"asked for {isa}, the op ran {kernels.last_isa('SelectiveScan')}")
            native[isa] = lambda s=session: s.run(None, feeds)
        os.environ.pop("MVGPT_SCAN_ISA")
    else:
        print("native op skipped: run `python -m mvgpt.kernels.build`", file=sys.stderr)
    others: dict[str, Callable[[], object]] = {}
    if not args.no_portable:
        scan = make_session(portable.scan_model(*shape, True, True, True, True), False)
        others["ort_portable_scan"] = lambda: scan.run(None, feeds)
    versions = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
    if not args.no_torch:
        import torch

        from mvgpt.models.scan import selective_scan_ref

        torch.set_num_threads(args.threads)
        versions["torch"] = torch.__version__
        targs = [torch.from_numpy(feeds[k]) for k in portable.INPUTS]

        def run_torch() -> object:
            with torch.inference_mode():
                return selective_scan_ref(*targs, delta_softplus=True)

        others["torch_reference"] = run_torch

    updates = args.batch * args.dim * args.state * args.length
    common = {
        **environment(args.threads, versions),
        "shape": {"batch": args.batch, "dim": args.dim, "state": args.state, "length": args.length},
    }
    times: dict[str, list[float]] = {isa: [] for isa in native}
    for fn in native.values():
        time_it(fn, args.warmup, 0)
    for _ in range(args.rounds):
        for isa, fn in native.items():
            times[isa] += time_it(fn, 0, args.repeat)
    rows = []  # (name, isa, median s, min s, floor s)
    for isa, ts in times.items():
        median, best = statistics.median(ts), min(ts)
        try:
            peak = measure_fma_peak(isa, args.threads)
        except (RuntimeError, ValueError) as e:
            print(f"no FMA floor for {isa}: {e}", file=sys.stderr)
            peak = None
        floor = scan_fma_floor(updates, peak) if peak else None
        row = {"impl": "ort_native_op", "isa": isa, "median_ms": median * 1e3, "min_ms": best * 1e3}
        if floor is not None:
            row |= {"floor_ms": floor * 1e3, "x_floor": median / floor, "x_floor_min": best / floor}
            row |= {"fma_lanes_per_s": peak, "floor_fma_ops_per_update": SCAN_FMA_OPS}
        row |= {"updates_per_s": updates / median, "repeat": args.repeat, "rounds": args.rounds}
        emit(row | common)
        rows.append(("ort_native_op", isa, median, best, floor))
    for name, fn in others.items():
        ts = time_it(fn, args.warmup, args.repeat)
        median, best = statistics.median(ts), min(ts)
        row = {"impl": name, "median_ms": median * 1e3, "min_ms": best * 1e3}
        row |= {"updates_per_s": updates / median, "repeat": args.repeat}
        emit(row | common)
        rows.append((name, "", median, best, None))

    base = rows[len(native) - 1 if native else -1][2]  # the last set asked (default: the widest)
    columns = [("implementation", 18), ("isa", 7), ("median ms", 10), ("min ms", 9)]
    columns += [("floor ms", 9), ("x floor", 8), ("G updates/s", 12), ("x native", 9)]
    table = [
        [name, isa or "-", f"{median * 1e3:.2f}", f"{best * 1e3:.2f}",
         fmt(floor and floor * 1e3, ".2f"), fmt(floor and median / floor, ".2f"),
         f"{updates / median / 1e9:.2f}", f"{median / base:.2f}"]
        for name, isa, median, best, floor in rows
    ]  # fmt: skip
    print_table(columns, table)
    print(
        f"floor: {SCAN_FMA_OPS} FMA-pipe ops per state update (floors.SCAN_FMA_OPS) at the FMA "
        f"peak measured at each width with {args.threads} threads; x floor from the median"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
