"""Benchmark the native runtime (libmvgpt through mvgpt-cli) against the Python runtime on one
package and the same frames: time to first token (from the frames in memory to the first answer
token, the encoding included), decode tokens/s, the answer's seconds per stage, and peak RSS.

Both answer the same question greedily about the same RGB frames (the bundled sample video's
16 sampled frames, or --video's), --max-new-tokens tokens, with --threads threads. Each run is its
own subprocess (peak RSS is the child's ru_maxrss, from wait4); one round runs both in turn and
--repeat rounds interleave them, so load from other processes hits both alike. The parent prints
one JSON line per run, one summary line per runtime (medians over rounds) and a table with the
native/Python ratios; both must give the same token ids.

    python benchmarks/bench_native.py --model /tmp/pkg05_int8 --repeat 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import default_threads, emit, environment, fmt, print_table  # noqa: E402

QUESTION = "What is happening in this video? Describe the actions in detail."
CLI = HERE.parent / "runtime" / "native" / "bin" / "mvgpt-cli"
PYTHON_RUN = r"""
import json, sys, time
import numpy as np
from mvgpt.runtime.pipeline import Pipeline

package, raw, f, h, w, question, tokens, threads = sys.argv[1:9]
pipeline = Pipeline.load(package, threads=int(threads))
frames = np.fromfile(raw, np.uint8).reshape(int(f), int(h), int(w), 3)
start = time.perf_counter()
encoding = pipeline.encode(frames)
answer = pipeline.answer(encoding, question, max_new_tokens=int(tokens))
seconds = {**encoding.seconds, **answer.seconds}
print(json.dumps({"token_ids": list(answer.token_ids), "seconds": seconds,
                  "ttft_s": sum(encoding.seconds.values()) + answer.ttft_s,
                  "decode_tokens_per_s": answer.decode_tokens_per_s,
                  "custom_ops": pipeline.package.custom_ops}))
"""


def run_child(command: list[str], env: dict[str, str]) -> tuple[dict, float, float]:
    """(the child's JSON record, its peak RSS in MiB, wall seconds)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    if child.returncode != 0:
        raise SystemExit(f"{command[0]} failed (exit {child.returncode}): {errors[-2000:]}")
    return json.loads(text.strip().splitlines()[-1]), usage.ru_maxrss / 1024.0, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="package folder (e.g. a 0.5b int8 export)")
    parser.add_argument("--video", help="video file (default: the built-in sample)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--repeat", type=int, default=3, help="rounds (each runtime once)")
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    from mvgpt.runtime.default_model import builtin_package
    from mvgpt.runtime.sessions import built_library_path
    from mvgpt.runtime.video import read_frames

    if not CLI.is_file():
        raise SystemExit(f"{CLI} is not built; fix: python -m mvgpt.kernels.build --native")
    video = Path(args.video) if args.video else builtin_package().parent / "sample.mp4"
    frames, _ = read_frames(video, 16)
    env = {**os.environ, "MVGPT_OPS_LIBRARY": str(built_library_path())}
    header = environment(args.threads, {"onnxruntime": ort.__version__})
    records: dict[str, list[dict]] = {"python": [], "native": []}
    with tempfile.TemporaryDirectory(prefix="mvgpt-bench-") as tmp:
        raw = Path(tmp) / "frames.rgb"
        np.ascontiguousarray(frames).tofile(raw)
        f, h, w = frames.shape[:3]
        commands = {
            "python": [sys.executable, "-c", PYTHON_RUN, args.model, str(raw), str(f), str(h),
                       str(w), QUESTION, str(args.max_new_tokens), str(args.threads)],
            "native": [str(CLI), "--model", args.model, "--frames", str(raw), "--shape",
                       f"{f},{h},{w}", "--json", "--max-new-tokens", str(args.max_new_tokens),
                       "--threads", str(args.threads), QUESTION],
        }  # fmt: skip
        for round_ in range(args.repeat):
            for name, command in commands.items():
                record, rss, wall = run_child(command, env)
                row = {
                    **header,
                    "bench": "native",
                    "runtime": name,
                    "round": round_,
                    "model": args.model,
                    "frames": [int(f), int(h), int(w)],
                    "max_new_tokens": args.max_new_tokens,
                    "ttft_s": record["ttft_s"],
                    "decode_tokens_per_s": record["decode_tokens_per_s"],
                    "seconds": record["seconds"],
                    "peak_rss_mib": rss,
                    "process_wall_s": wall,
                    "tokens": len(record["token_ids"]),
                    "custom_ops": record["custom_ops"],
                }
                records[name].append({**row, "token_ids": record["token_ids"]})
                emit(row)
    same = all(
        p["token_ids"] == n["token_ids"]
        for p, n in zip(records["python"], records["native"], strict=True)
    )

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in records[name] if r[key] is not None]
        return statistics.median(values) if values else None

    rows = []
    for name in ("python", "native"):
        summary = {k: median(name, k) for k in ("ttft_s", "decode_tokens_per_s", "peak_rss_mib")}
        emit({**header, "bench": "native", "runtime": name, "summary": summary,
              "rounds": args.repeat, "same_token_ids": same})  # fmt: skip
        rows.append((name, summary))
    base = rows[0][1]
    table = []
    for name, s in rows:
        table.append([
            name,
            fmt(s["ttft_s"], ".2f"),
            fmt(s["ttft_s"] / base["ttft_s"], ".2f"),
            fmt(s["decode_tokens_per_s"], ".1f"),
            fmt(s["decode_tokens_per_s"] / base["decode_tokens_per_s"]
                if s["decode_tokens_per_s"] and base["decode_tokens_per_s"] else None, ".2f"),
            fmt(s["peak_rss_mib"], ".0f"),
            fmt(s["peak_rss_mib"] / base["peak_rss_mib"], ".2f"),
        ])  # fmt: skip
    print_table(
        [("runtime", 8), ("ttft s", 8), ("x py", 6), ("decode tok/s", 13), ("x py", 6),
         ("peak RSS MiB", 13), ("x py", 6)],
        table,
    )  # fmt: skip
    print(f"same token ids: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
