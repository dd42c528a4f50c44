"""Benchmark one decode step of the decoder's attention alone: mvgpt::GroupQueryAttention against
onnxruntime's com.microsoft.GroupQueryAttention, at several thread counts, mvgpt's once per
instruction set (--isa, repeatable; default every set of this CPU whose width divides head_dim).

The graph holds one attention node per layer (24 at Qwen2.5-0.5B: 14 query heads, 2 kv heads,
head_dim 64), each with its own cache of --past positions bound in place as past and present
(the runtime's way), so one run reads every layer's cache once, as a decoded token does: 60 MB at
2450 positions, more than the CPU's caches. The engines are interleaved round by round. Prints
JSON lines (one per thread count, engine and instruction set) and a table; the floor is the cache
bytes over the numpy copy bandwidth measured in the same run.

    python benchmarks/bench_attention.py --threads 1 --threads 2
    python benchmarks/bench_attention.py --isa avx2 --isa avx512
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, environment  # noqa: E402
from floors import measure_bandwidth  # noqa: E402

from mvgpt import kernels  # noqa: E402
from mvgpt.runtime.manifest import (  # noqa: E402
    CUSTOM_OP_ATTENTION,
    CUSTOM_OP_DOMAIN,
    IR_VERSION,
    OPSET,
    ORT_CONTRIB_DOMAIN,
)
from mvgpt.runtime.sessions import session_options  # noqa: E402


def graph(layers: int, nh: int, kvh: int, hd: int, max_pos: int, domain: str) -> bytes:
    f = TensorProto.FLOAT
    width = (nh + 2 * kvh) * hd
    shared = [
        helper.make_tensor_value_info("sl", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("tot", TensorProto.INT32, []),
        helper.make_tensor_value_info("cos", f, [max_pos, hd // 2]),
        helper.make_tensor_value_info("sin", f, [max_pos, hd // 2]),
    ]
    nodes, inputs, outputs = [], [], []
    for i in range(layers):
        nodes.append(
            helper.make_node(
                CUSTOM_OP_ATTENTION,
                [f"q{i}", "", "", f"pk{i}", f"pv{i}", "sl", "tot", "cos", "sin"],
                [f"o{i}", f"prk{i}", f"prv{i}"],
                domain=domain,
                num_heads=nh,
                kv_num_heads=kvh,
                scale=hd**-0.5,
                do_rotary=1,
            )
        )
        inputs.append(helper.make_tensor_value_info(f"q{i}", f, [1, 1, width]))
        for name in (f"pk{i}", f"pv{i}"):
            inputs.append(helper.make_tensor_value_info(name, f, [1, kvh, "P", hd]))
        outputs += [
            helper.make_tensor_value_info(n, f, None) for n in (f"o{i}", f"prk{i}", f"prv{i}")
        ]
    model = helper.make_model(
        helper.make_graph(nodes, "attention", inputs + shared, outputs),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(domain, 1)],
    )
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, action="append", help="repeatable (default 2)")
    parser.add_argument("--past", type=int, default=2449, help="cached positions before the step")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=20, help="steps timed per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, engines interleaved")
    parser.add_argument("--isa", action="append", help="mvgpt's, repeatable (default: all)")
    args = parser.parse_args(argv)
    nh, kvh, hd, max_pos = 14, 2, 64, 32768
    lanes = {"scalar": 1, "neon": 4, "avx2": 8, "avx512": 16}  # kernels/cpu.h's
    isas = args.isa or [i for i in kernels.cpu_isas() if hd % lanes[i] == 0]
    capacity = args.past + 1
    rng = np.random.default_rng(0)
    inv = 1.0 / 1e6 ** (np.arange(0, hd, 2) / hd)
    angles = np.arange(max_pos)[:, None] * inv[None]
    feeds = {
        "sl": np.array([args.past], np.int32),
        "tot": np.array(args.past + 1, np.int32),
        "cos": np.cos(angles).astype(np.float32),
        "sin": np.sin(angles).astype(np.float32),
    }
    queries = [rng.standard_normal((1, 1, (nh + 2 * kvh) * hd), np.float32) for _ in range(24)]
    caches = [
        [0.5 * rng.standard_normal((1, kvh, capacity, hd), np.float32) for _ in range(2)]
        for _ in range(args.layers)
    ]
    values = [[ort.OrtValue.ortvalue_from_numpy(c) for c in pair] for pair in caches]
    cache_bytes = sum(c.nbytes for pair in caches for c in pair)
    rows = []
    for threads in args.threads or [2]:
        engines = {}
        kinds = [("mvgpt", isa, CUSTOM_OP_DOMAIN) for isa in isas]
        for name, isa, domain in [*kinds, ("onnxruntime", "-", ORT_CONTRIB_DOMAIN)]:
            custom = domain == CUSTOM_OP_DOMAIN
            if custom:
                os.environ["MVGPT_ATTENTION_ISA"] = isa  # read when the session creates the kernel
            options = session_options(threads, custom_op=CUSTOM_OP_ATTENTION if custom else None)
            session = ort.InferenceSession(
                graph(args.layers, nh, kvh, hd, max_pos, domain), options, ["CPUExecutionProvider"]
            )
            binding = session.io_binding()
            for key, value in feeds.items():
                binding.bind_cpu_input(key, value)
            for i in range(args.layers):
                binding.bind_cpu_input(f"q{i}", queries[i % len(queries)])
                binding.bind_ortvalue_input(f"pk{i}", values[i][0])
                binding.bind_ortvalue_input(f"pv{i}", values[i][1])
                binding.bind_output(f"o{i}", "cpu")
                binding.bind_ortvalue_output(f"prk{i}", values[i][0])
                binding.bind_ortvalue_output(f"prv{i}", values[i][1])
            session.run_with_iobinding(binding)  # warm-up
            if domain == CUSTOM_OP_DOMAIN and kernels.last_isa("GroupQueryAttention") != isa:
                ran = kernels.last_isa("GroupQueryAttention")
                raise SystemExit(f"asked mvgpt's attention for {isa}, it ran {ran}")
            engines[(name, isa)] = (session, binding, [])
        os.environ.pop("MVGPT_ATTENTION_ISA", None)
        for _ in range(args.rounds):
            for session, binding, times in engines.values():
                start = time.perf_counter()
                for _ in range(args.repeat):
                    session.run_with_iobinding(binding)
                times.append((time.perf_counter() - start) / args.repeat)
        bandwidth = measure_bandwidth(threads)
        for (name, isa), (_, _, times) in engines.items():
            row = {
                "bench": "attention",
                "engine": name,
                "isa": isa,
                "threads": threads,
                "layers": args.layers,
                "past": args.past,
                "step_median_s": float(np.median(times)),
                "step_min_s": float(np.min(times)),
                "cache_bytes": cache_bytes,
                "floor_s": cache_bytes / bandwidth,
                **environment(threads, {"onnxruntime": ort.__version__}, "CPUExecutionProvider"),
            }
            rows.append(row)
            emit(row)
    megabytes = cache_bytes / 1e6
    print(
        f"\n{args.layers} attention nodes, 1 position after {args.past}, cache {megabytes:.0f} MB"
    )
    head = ("threads", "engine", "isa", "median ms", "min ms", "floor ms", "x floor", "x ort")
    print("{:>7} {:<12} {:<7} {:>9} {:>7} {:>8} {:>7} {:>6}".format(*head))
    for r in rows:
        ref = next(o for o in rows if (o["threads"], o["engine"]) == (r["threads"], "onnxruntime"))
        print(
            f"{r['threads']:>7} {r['engine']:<12} {r['isa']:<7} {r['step_median_s'] * 1e3:9.2f} "
            f"{r['step_min_s'] * 1e3:7.2f} {r['floor_s'] * 1e3:8.2f} "
            f"{r['step_median_s'] / r['floor_s']:7.1f} "
            f"{ref['step_median_s'] / r['step_median_s']:6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
