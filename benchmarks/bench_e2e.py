"""Benchmark video file -> answer end to end: the PyTorch reference (fp32, bf16) and mvgpt packages.

All configurations answer the same question about the same generated 16-frame video (20 s at
10 fps unless --video is given) with the same random checkpoint (the one the first package was
made from, written under --work unless --checkpoint names it), greedy, --max-new-tokens tokens.
Each configuration runs in its own subprocess, so its peak RSS (ru_maxrss) is its own; one round
runs every configuration once, in turn (a fresh subprocess each: --warmup answers, then one timed
answer), and --repeat rounds interleave them, so load from other processes hits all alike. The
parent collects their JSON lines (ttft, decode tokens/s, seconds per stage, peak RSS, token ids),
prints one summary line per configuration (medians over rounds) and a table with ratios against
the reference fp32. --avx2-view runs every configuration a second time in each round under
avx2_view.py (this CPU with AVX-512, VNNI and AMX hidden: every library takes its AVX2 kernels),
rows marked [avx2_view], their ratios against the reference fp32 under the view; --cpu-view
avx512-novnni (repeatable, with avx2) adds avx2_view.py's other view, AVX-512 without VNNI.

    python benchmarks/bench_e2e.py --model /tmp/pkg_05b --warmup 0 --repeat 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    default_threads,
    emit,
    environment,
    fmt,
    peak_rss_mib,
    print_table,
    reference_row,
)

QUESTION = "What is happening in this video? Describe the actions in detail."
VISION = ("clip_vision", "frame_scorer", "video_mamba", "projectors")


def _reference_run(runner, video: str, question: str, max_new_tokens: int) -> dict:
    """One reference answer as the common measurement dict."""
    start = time.perf_counter()
    result = runner.answer(video, question, max_new_tokens, do_sample=False)
    total = time.perf_counter() - start
    s = result.seconds
    tokens = len(result.token_ids)
    decode = s["generate"] - s["ttft_after_encode"]
    return {
        "total_s": total,
        "ttft_s": s["decode_video"] + s["encode"] + s["ttft_after_encode"],
        "decode_tokens_per_s": (tokens - 1) / decode if tokens > 1 and decode > 0 else None,
        "stages": {
            "decode_video": s["decode_video"],
            "vision": s["encode"],  # all vision stages + prompt embeddings, one block
            "prefill": s["ttft_after_encode"],  # prefill + first token
            "decode": decode,
        },
        "token_ids": list(result.token_ids),
    }


def _mvgpt_run(pipeline, video: str, question: str, max_new_tokens: int) -> dict:
    start = time.perf_counter()
    answer = pipeline.answer(video, question, max_new_tokens=max_new_tokens)
    total = time.perf_counter() - start
    s = answer.seconds
    stages = {"decode_video": s["decode_video"], "vision": sum(s.get(k, 0.0) for k in VISION)}
    stages |= {k: s[k] for k in VISION if k in s}
    stages |= {"prefill": s["prefill"], "decode": s["decode"]}
    return {
        "total_s": total,
        "ttft_s": answer.ttft_s,
        "decode_tokens_per_s": answer.decode_tokens_per_s,
        "stages": stages,
        "token_ids": list(answer.token_ids),
    }


def worker(args: argparse.Namespace) -> int:
    """Run one configuration; print one JSON line."""
    import numpy as np
    import onnxruntime as ort

    config = json.loads(args.worker)
    versions = {"onnxruntime": ort.__version__, "numpy": np.__version__}
    start = time.perf_counter()
    if config["engine"] == "reference":
        import torch

        from mvgpt.models.reference_runner import ReferenceRunner

        torch.set_num_threads(args.threads)
        versions["torch"] = torch.__version__
        engine = ReferenceRunner(config["checkpoint"], config["clip"], config["dtype"])
        run, name, provider = _reference_run, f"reference {config['dtype']}", "torch cpu"
    else:
        from mvgpt.runtime import Pipeline

        engine = Pipeline.load(config["model"], threads=args.threads)
        precision = engine.package.manifest.get("precision", "fp32")
        run, provider = _mvgpt_run, "CPUExecutionProvider"
        name = f"mvgpt {precision} ({Path(config['model']).name})"
        if not engine.package.custom_ops:
            name += " portable"
    if config.get("cpu_view"):
        name += f" [{config['cpu_view']}]"
    load_s = time.perf_counter() - start
    for _ in range(args.warmup):
        run(engine, args.video, args.question, args.max_new_tokens)
    runs = [run(engine, args.video, args.question, args.max_new_tokens) for _ in range(args.repeat)]

    for index, result in enumerate(runs):
        row = {"bench": "e2e_run", "config": name, "load_s": load_s, "run": index, **result}
        row |= {"new_tokens": len(result["token_ids"]), "max_new_tokens": args.max_new_tokens}
        row |= {"warmup": args.warmup, "peak_rss_mib": peak_rss_mib(), **config}
        emit(row | environment(args.threads, versions, provider))
    return 0


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict]) -> dict:
    """One configuration's runs (rounds) -> its summary row (medians; peak RSS: the largest)."""
    stages = {k: _median([r["stages"][k] for r in runs]) for k in runs[0]["stages"]}
    row = {"bench": "e2e", "config": runs[0]["config"]}
    row |= {"load_s": _median([r["load_s"] for r in runs])}
    row |= {"ttft_median_s": _median([r["ttft_s"] for r in runs])}
    row |= {"ttft_min_s": min(r["ttft_s"] for r in runs)}
    row |= {"decode_tokens_per_s": _median([r["decode_tokens_per_s"] for r in runs])}
    row |= {"total_median_s": _median([r["total_s"] for r in runs]), "stages_median_s": stages}
    row |= {"new_tokens": runs[0]["new_tokens"], "token_ids": runs[0]["token_ids"]}
    row |= {"repeat": len(runs), "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}
    skip = {"bench", "run", "total_s", "ttft_s", "decode_tokens_per_s", "stages", "token_ids"}
    skip |= set(row)
    return row | {k: v for k, v in runs[-1].items() if k not in skip}


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """The checkpoint folders and the video, written under --work when not given."""
    from mvgpt.runtime.package import read_manifest

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        root = Path(args.checkpoint)
    else:
        source = read_manifest(args.model[0]).get("source", {})
        if not source.get("random_weights"):
            raise SystemExit("the package is not from random weights: pass --checkpoint")
        size, seed = source.get("random_size", "0.5b"), int(source.get("random_seed", 0))
        root = work / f"random_{size}_seed{seed}"
        if not (root / "checkpoint" / "config.json").is_file():
            from mvgpt.models.random_checkpoint import write_random_checkpoint

            print(f"writing the random {size} checkpoint to {root}", file=sys.stderr)
            write_random_checkpoint(root, size, seed)
    if not args.video:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from videos import make_video

        args.video = str(work / "video_20s_10fps.mp4")
        if not Path(args.video).is_file():
            make_video(args.video, seconds=20, fps=10, size=(320, 240))
    return root / "checkpoint", root / "clip"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="package (repeatable)")
    parser.add_argument("--checkpoint", help="random checkpoint root (checkpoint/ and clip/)")
    parser.add_argument("--video", help="video file (default: a generated 20 s, 10 fps one)")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--work", default="/tmp/mvgpt-bench-e2e", help="cache folder")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1, help="untimed answers per subprocess")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (timed answers per config)")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--dtype", action="append", help="reference dtypes (default fp32, bf16)")
    parser.add_argument(
        "--avx2-view", action="store_true", help="each configuration also under avx2_view.py"
    )
    parser.add_argument(
        "--cpu-view", action="append", default=[], help="avx2 | avx512-novnni (repeatable)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one configuration
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if not args.model:
        parser.error("give at least one --model PKG")

    checkpoint, clip = prepare(args)
    configs = []
    if not args.no_reference:
        for dtype in args.dtype or ["fp32", "bf16"]:
            configs.append({"engine": "reference", "dtype": dtype})
            configs[-1] |= {"checkpoint": str(checkpoint), "clip": str(clip)}
    configs += [{"engine": "mvgpt", "model": str(Path(m).expanduser())} for m in args.model]
    envs: list[dict | None] = [None] * len(configs)
    views = list(dict.fromkeys((["avx2"] if args.avx2_view else []) + args.cpu_view))
    if views:
        import avx2_view

        natives = list(configs)
        for view in views:
            try:
                env = avx2_view.environment(view=view)
            except avx2_view.ViewError as e:
                raise SystemExit(f"--cpu-view {view}: {e}") from e
            envs += [env] * len(natives)
            configs += [c | {"cpu_view": f"{view}_view"} for c in natives]

    common = ["--video", args.video, "--question", args.question, "--threads", str(args.threads)]
    common += ["--max-new-tokens", str(args.max_new_tokens), "--warmup", str(args.warmup)]
    common += ["--repeat", "1"]
    runs: dict[str, list[dict]] = {}
    for round_index in range(args.repeat):  # rounds: every configuration once, in turn
        for config, env in zip(configs, envs, strict=True):
            command = [sys.executable, __file__, "--worker", json.dumps(config), *common]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
            lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
            if done.returncode != 0 or not lines:
                print(f"{config}: worker failed (exit {done.returncode})", file=sys.stderr)
                continue
            for line in lines:
                emit(line | {"round": round_index})
                runs.setdefault(line["config"], []).append(line)
    rows = [summarize(group) for group in runs.values()]
    for row in rows:
        emit(row)
    if not rows:
        return 1

    columns = [("configuration", 40), ("ttft s", 8), ("x ref", 6), ("tok/s", 7), ("x ref", 6)]
    columns += [("video", 6), ("vision", 7), ("prefill", 8), ("decode", 7), ("RSS MiB", 8)]
    columns += [("same tokens", 12)]
    table = []
    for r in rows:
        base = reference_row(r, rows)
        st = r["stages_median_s"]
        tps, base_tps = r["decode_tokens_per_s"], base["decode_tokens_per_s"]
        same = sum(1 for _ in zip(r["token_ids"], base["token_ids"], strict=False))
        match = 0
        for a, b in zip(r["token_ids"], base["token_ids"], strict=False):
            if a != b:
                break
            match += 1
        table.append(
            [
                r["config"],
                f"{r['ttft_median_s']:.2f}",
                f"{base['ttft_median_s'] / r['ttft_median_s']:.2f}",
                fmt(tps, ".2f"),
                fmt(tps / base_tps if tps and base_tps else None, ".2f"),
                f"{st['decode_video']:.2f}",
                f"{st['vision']:.2f}",
                f"{st['prefill']:.2f}",
                f"{st['decode']:.2f}",
                f"{r['peak_rss_mib']:.0f}",
                f"{match}/{same}",
            ]
        )
    print(
        f"\n{args.max_new_tokens} new tokens max, {args.threads} threads, medians of "
        f"{args.repeat}; x ref = speed relative to {reference_row(rows[0], rows)['config']} (under "
        "avx2_view: its own under the view; >1 faster); same tokens = greedy prefix shared with it"
    )
    print_table(columns, table)
    by_name = {r["config"]: r for r in rows}
    for r in rows:  # each configuration under a view against itself on the whole CPU
        native = by_name.get(r["config"].rsplit(" [", 1)[0])
        if native is None or native is r:
            continue
        st, nst = r["stages_median_s"], native["stages_median_s"]
        parts = [f"ttft {r['ttft_median_s'] / native['ttft_median_s']:.2f}x"]
        if r["decode_tokens_per_s"] and native["decode_tokens_per_s"]:
            ratio = native["decode_tokens_per_s"] / r["decode_tokens_per_s"]
            parts.append(f"time per token {ratio:.2f}x")
        parts += [f"{k} {st[k] / nst[k]:.2f}x" for k in ("vision", "prefill") if nst.get(k)]
        print(f"{r['config']}: {', '.join(parts)} the native run's (>1 slower)")
    mvgpt_rows = [r for r in rows if r["config"].startswith("mvgpt")]
    if mvgpt_rows and "clip_vision" in mvgpt_rows[0]["stages_median_s"]:
        parts = ", ".join(f"{k} {mvgpt_rows[0]['stages_median_s'][k]:.2f} s" for k in VISION)
        print(f"{mvgpt_rows[0]['config']} vision stages: {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
