"""Benchmark the LLM alone at Qwen2.5-0.5B shapes with one set of random weights.

Engines, interleaved round by round in one process: transformers Qwen2ForCausalLM (eager PyTorch,
fp32 and bf16), our decoder.onnx from --model (any precision), and onnxruntime-genai with an int4
CPU model its builder made from the same weights (skipped with a note when not installed). Each
round: prefill of --prompt-length random token ids (to the first greedy token), then
--decode-tokens greedy steps at that context. Prints JSON lines (prefill seconds, decode
tokens/s = 1 / median step seconds) and a table with ratios against transformers fp32 and genai.

The weights: the random checkpoint the package was made from (its manifest's size and seed) is
written under --work unless --checkpoint names it; the package's embeddings are checked against
it before anything is timed. The Hugging Face folder and the genai model are cached under --work.

    python benchmarks/bench_decoder.py --model INT8_PKG [--model INT4_PKG] --repeat 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    default_threads,
    emit,
    environment,
    fmt,
    peak_rss_mib,
    print_table,
    summary,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", required=True, help="package folder (repeatable, same weights)"
    )
    parser.add_argument("--checkpoint", help="random checkpoint root (checkpoint/ and clip/)")
    parser.add_argument("--work", default="/tmp/mvgpt-bench-decoder", help="cache folder")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--prompt-length", type=int, default=2450)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--attn", default="sdpa", help="transformers attn_implementation")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--no-genai", action="store_true")
    parser.add_argument(
        "--portable",
        action="store_true",
        help="also run each package's portable decoder (onnxruntime's attention kernel)",
    )
    args = parser.parse_args(argv)

    import decoder_peers as peers
    import numpy as np
    import onnxruntime as ort
    import torch

    from mvgpt.models.random_checkpoint import write_random_checkpoint
    from mvgpt.runtime.package import read_manifest
    from mvgpt.runtime.pipeline import PREFILL_CHUNK

    folders = [Path(m).expanduser() for m in args.model]
    manifests = [read_manifest(f) for f in folders]
    man = manifests[0]  # the first package names the weights
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = man.get("source", {})
    if args.checkpoint:
        root = Path(args.checkpoint)
    elif source.get("random_weights"):
        size, seed = source.get("random_size", "0.5b"), int(source.get("random_seed", 0))
        root = work / f"random_{size}_seed{seed}"
        if not (root / "checkpoint" / "config.json").is_file():
            print(f"writing the random {size} checkpoint (seed {seed}) to {root}", file=sys.stderr)
            write_random_checkpoint(root, size, seed)
    else:
        parser.error("the package is not from random weights: pass --checkpoint")
    hf_dir = work / f"hf_qwen2_{root.name}"
    if not (hf_dir / "config.json").is_file():
        print(f"writing the Qwen2ForCausalLM folder {hf_dir}", file=sys.stderr)
        peers.write_hf_folder(root / "checkpoint", root / "clip", hf_dir)

    probe = np.arange(8, dtype=np.int64)
    from safetensors import safe_open

    with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
        want = f.get_slice("model.embed_tokens.weight")[:8].float().numpy()
    onnx_engines = {}
    for pkg, pkg_man in zip(folders, manifests, strict=True):
        capacity = args.prompt_length + args.decode_tokens + 8
        engine = peers.OnnxEngine(pkg, pkg_man, args.threads, PREFILL_CHUNK, capacity)
        got = engine.embeddings(probe)[0]
        diff = float(np.abs(got - want).max())
        print(f"same weights: {pkg} embed_tokens rows 0..7, max |diff| = {diff:.3g}")
        if diff > 0.02 * float(np.abs(want).max()):
            raise SystemExit(f"{pkg} was not made from {root}: embeddings differ by {diff}")
        precision = pkg_man.get("precision", "fp32")
        onnx_engines[f"mvgpt decoder.onnx {precision}"] = engine
        if args.portable and "portable_file" in pkg_man["stages"]["decoder"]:
            onnx_engines[f"mvgpt decoder_portable.onnx {precision}"] = peers.OnnxEngine(
                pkg, pkg_man, args.threads, PREFILL_CHUNK, capacity, portable=True
            )

    engines: dict[str, object] = {}
    versions = {"onnxruntime": ort.__version__, "torch": torch.__version__}
    versions["numpy"] = np.__version__
    notes = []
    if not args.no_transformers:
        import transformers

        versions["transformers"] = transformers.__version__
        for dtype in ("fp32", "bf16"):
            engines[f"transformers {dtype}"] = peers.TransformersEngine(
                hf_dir, dtype, args.threads, args.attn
            )
    engines |= onnx_engines
    if not args.no_genai:
        try:
            import onnxruntime_genai as og
        except ImportError:
            notes.append("onnxruntime-genai skipped: not installed (pip install onnxruntime-genai)")
        else:
            versions["onnxruntime_genai"] = og.__version__
            genai_dir = work / f"genai_int4_{root.name}"
            if not (genai_dir / "genai_config.json").is_file():
                print(f"building the genai int4 model {genai_dir}", file=sys.stderr)
                peers.build_genai(hf_dir, genai_dir)
            max_length = args.prompt_length + args.decode_tokens + 8
            engines["onnxruntime-genai int4"] = peers.GenaiEngine(
                genai_dir, args.threads, max_length
            )
    env = environment(args.threads, versions, "CPUExecutionProvider")
    env |= {"model": [str(f) for f in folders], "prompt_length": args.prompt_length}

    ids = np.random.default_rng(0).integers(0, 151000, args.prompt_length).astype(np.int64)
    prefill: dict[str, list[float]] = {name: [] for name in engines}
    steps: dict[str, list[float]] = {name: [] for name in engines}
    for round_index in range(args.warmup + args.repeat):
        for name, engine in engines.items():  # interleaved: every engine sees the same noise
            seconds, state = engine.prefill(ids)
            step_times = [engine.step(state) for _ in range(args.decode_tokens)]
            del state
            print(
                f"round {round_index} {name}: prefill {seconds:.2f} s, step "
                f"{statistics.median(step_times) * 1e3:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
            if round_index >= args.warmup:
                prefill[name].append(seconds)
                steps[name] += step_times

    rows = []
    for name in engines:
        pre, step = summary(prefill[name]), summary(steps[name])
        row = {"bench": "decoder", "engine": name, "prefill_median_s": pre["median_s"]}
        row |= {"prefill_min_s": pre["min_s"], "step_median_s": step["median_s"]}
        row |= {"step_min_s": step["min_s"], "decode_tokens_per_s": 1.0 / step["median_s"]}
        row |= {"prefill_tokens_per_s": args.prompt_length / pre["median_s"]}
        row |= {"repeat": args.repeat, "decode_tokens": args.decode_tokens}
        rows.append(row)
        emit(row | {"peak_rss_mib": peak_rss_mib(), **env})

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    base = next((r for r in rows if r["engine"] == "transformers fp32"), None)
    genai = next((r for r in rows if r["engine"].startswith("onnxruntime-genai")), None)
    columns = [("engine", 26), ("prefill s", 10), ("min s", 8), ("decode tok/s", 13)]
    columns += [("prefill x tf32", 15), ("decode x tf32", 14), ("prefill x genai", 16)]
    columns += [("decode x genai", 15)]
    table = []
    for r in rows:
        p, d = r["prefill_median_s"], r["decode_tokens_per_s"]
        table.append(
            [
                r["engine"],
                f"{p:.2f}",
                f"{r['prefill_min_s']:.2f}",
                f"{d:.1f}",
                fmt(ratio(base and base["prefill_median_s"], p), ".2f"),
                fmt(ratio(d, base and base["decode_tokens_per_s"]), ".2f"),
                fmt(ratio(genai and genai["prefill_median_s"], p), ".2f"),
                fmt(ratio(d, genai and genai["decode_tokens_per_s"]), ".2f"),
            ]
        )
    print(
        f"\nprompt {args.prompt_length} tokens, {args.threads} threads; x = speed relative "
        "to that engine (>1 faster)"
    )
    print_table(columns, table)
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
