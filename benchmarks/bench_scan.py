"""Benchmark the selective scan at the VideoMamba-M shape (1, 1152, 16, 1569) by default.

Times, in one process on the same random inputs: the mvgpt::SelectiveScan C++ op in
onnxruntime, the portable ONNX Scan graph in onnxruntime, and the torch reference
(models/scan.py, eager). Prints one JSON line per implementation (median and min ms, state
updates per second = B*D*N*L / time, host, versions, threads, commit), then a table with ratios.

    python benchmarks/bench_scan.py --warmup 2 --repeat 10 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, environment, print_table, time_it  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--length", type=int, default=1569)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch reference")
    args = parser.parse_args(argv)

    os.environ["MVGPT_SCAN_THREADS"] = str(args.threads)  # read when the kernel is created
    import numpy as np
    import onnx
    import onnxruntime as ort

    from mvgpt import kernels
    from mvgpt.kernels import portable

    shape = (args.batch, args.dim, args.length, args.state)
    feeds = portable.random_inputs(*shape, True, True, True, seed=0)
    runs: dict[str, Callable[[], object]] = {}

    def make_session(model: onnx.ModelProto, custom: bool) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        if custom:
            kernels.register(options)
        return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])

    if kernels.is_available():
        native = make_session(portable.scan_model(*shape, True, True, True, False), True)
        runs["ort_native_op"] = lambda: native.run(None, feeds)
    else:
        print("native op skipped: run `python -m mvgpt.kernels.build`", file=sys.stderr)
    scan = make_session(portable.scan_model(*shape, True, True, True, True), False)
    runs["ort_portable_scan"] = lambda: scan.run(None, feeds)
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

        runs["torch_reference"] = run_torch

    updates = args.batch * args.dim * args.state * args.length
    common = {
        **environment(args.threads, versions),
        "shape": {"batch": args.batch, "dim": args.dim, "state": args.state, "length": args.length},
    }
    results = {}
    for name, fn in runs.items():
        times = time_it(fn, args.warmup, args.repeat)
        median, best = statistics.median(times), min(times)
        results[name] = median
        row = {"impl": name, "median_ms": median * 1e3, "min_ms": best * 1e3}
        row |= {"updates_per_s": updates / median, "repeat": args.repeat, **common}
        emit(row)

    base = results.get("ort_native_op", min(results.values()))
    columns = [("implementation", 20), ("median ms", 10), ("G updates/s", 12), ("x native", 9)]
    rows = [
        [name, f"{median * 1e3:.2f}", f"{updates / median / 1e9:.2f}", f"{median / base:.1f}"]
        for name, median in results.items()
    ]
    print_table(columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
