"""Benchmark every graph of a model package at the real shapes, against its floor.

Stages: clip_vision (16 frames), frame_scorer, video_mamba with the SelectiveScan custom op and
the portable Scan graph (interleaved), image/video projectors, embed_tokens (the prompt's text
ids), decoder prefill at the real prompt length (~2450, in the runtime's chunks) and one decode
step after that past, with mvgpt's attention op and with the portable decoder (onnxruntime's).
Each stage's floor is the larger of its matrix FLOPs over a MEASURED peak
(an ORT MatMul / MatMulInteger 2450x896x4864 product, measured before and after the stages, best
kept) and its bytes over a MEASURED memory bandwidth (numpy copy); see floors.py.

    python benchmarks/bench_stages.py --model /tmp/pkg_05b --warmup 1 --repeat 3 --threads 2
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    cpu_flags,
    default_threads,
    emit,
    environment,
    fmt,
    print_table,
    summary,
    time_it,
)

QUESTION = "What is happening in this video? Describe the actions in detail."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model package folder")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        help="positions per decoder prefill run (default: the runtime's; 0: one run)",
    )
    parser.add_argument("--only", action="append", help="run only these stages (repeatable)")
    args = parser.parse_args(argv)

    import floors
    import numpy as np
    import onnx
    import onnxruntime as ort

    from mvgpt.runtime import manifest as M
    from mvgpt.runtime.decoder import PREFILL_CHUNK, Decoder
    from mvgpt.runtime.package import read_manifest, stage_io
    from mvgpt.runtime.prompt import manifest_prompt_ids, split_visual
    from mvgpt.runtime.sessions import library_available, session_options

    folder = os.path.expanduser(args.model)
    man = read_manifest(folder)
    stages = man[M.K_STAGES]
    chunk = PREFILL_CHUNK if args.prefill_chunk is None else args.prefill_chunk
    env = environment(
        args.threads,
        {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__},
        "CPUExecutionProvider",
    )
    env |= {"model": folder, "precision": man.get(M.K_PRECISION, "fp32")}

    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(folder, man[M.K_TOKENIZER]))
    prefix, suffix = split_visual(manifest_prompt_ids(tokenizer, man[M.K_PROMPT], QUESTION))
    text_tokens = len(prefix) + len(suffix)
    prompt_length = text_tokens + int(man[M.K_VISUAL]["num_visual_tokens"])

    def probe() -> dict[str, float]:
        """The machine's peaks right now (other processes share it: they move with the load)."""
        now = {k: floors.measure_matmul_peak(k, args.threads, repeat=3) for k in ("fp32", "int8")}
        return now | {"bandwidth": floors.measure_bandwidth(args.threads, repeat=3)}

    first = probe()
    peaks = {"fp32": first["fp32"], "int8": first["int8"]}
    bandwidth = first["bandwidth"]
    rng = np.random.default_rng(0)

    def session(file: str, custom_op: str | None = None) -> ort.InferenceSession:
        options = session_options(args.threads, custom_op=custom_op)  # the runtime's
        path = os.path.join(folder, file)
        return ort.InferenceSession(path, options, ["CPUExecutionProvider"])

    work = floors.stage_work(man, text_tokens)
    dims = floors.decoder_dims(man)
    results: list[dict] = []

    def record(stage: str, file: str, times: list[float], need: floors.Work, **extra) -> None:
        path = os.path.join(folder, file)
        integer = floors.uses_integer_matmul(path)
        if stage != "embed_tokens" and not need.bytes:  # the weights are read at least once
            need = floors.Work(
                need.weight_flops, need.activation_flops, floors.initializer_bytes(path)
            )
        row = {"bench": "stages", "stage": stage, "file": file, **summary(times)}
        row |= {"repeat": len(times), "flops": need.flops, "weight_flops": need.weight_flops}
        row |= {"bytes": need.bytes, "weights_kernel": "int8" if integer else "fp32", **extra}
        row["local_peaks"] = probe()  # measured just after the stage, under the same load
        results.append(row)
        print(f"{stage}: median {row['median_s']:.4f} s", file=sys.stderr, flush=True)

    def wanted(stage: str) -> bool:
        return not args.only or stage in args.only

    def bench(fn: Callable[[], object]) -> list[float]:
        return time_it(fn, args.warmup, args.repeat)

    num_frames = int(man[M.K_SAMPLING]["num_frames"])
    features = rng.standard_normal((num_frames, 196, 768), dtype=np.float32)
    if wanted("clip_vision"):
        file = stages[M.CLIP_VISION][M.S_FILE]
        s = session(file)
        pixels = {"pixel_values": rng.standard_normal((num_frames, 3, 224, 224), np.float32)}
        features = s.run(None, pixels)[0]
        record("clip_vision", file, bench(lambda: s.run(None, pixels)), work["clip_vision"])
        del s
    if wanted("frame_scorer"):
        file = stages[M.FRAME_SCORER][M.S_FILE]
        s = session(file)
        chunk_size = int(man[M.K_SAMPLING]["chunk_size"])
        feeds = {"image_features": features.reshape(num_frames // chunk_size, -1, 768)}
        record("frame_scorer", file, bench(lambda: s.run(None, feeds)), work["frame_scorer"])
        del s
    video_features = rng.standard_normal((8, 196, 576), dtype=np.float32)
    if wanted("video_mamba"):
        entry = stages[M.VIDEO_MAMBA]
        feeds = {"pixel_values": rng.standard_normal((1, 3, 8, 224, 224), np.float32)}
        runs = {}
        if library_available():
            op = M.CUSTOM_OP_STAGES[M.VIDEO_MAMBA]
            runs["video_mamba[native op]"] = (entry[M.S_FILE], session(entry[M.S_FILE], op))
        else:
            print("native op skipped: run `python -m mvgpt.kernels.build`", file=sys.stderr)
        portable = entry.get(M.S_PORTABLE_FILE)
        if portable:
            runs["video_mamba[portable]"] = (portable, session(portable))
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _, s in runs.values():
            video_features = s.run(None, feeds)[0]
            time_it(lambda s=s: s.run(None, feeds), max(args.warmup - 1, 0), 0)
        for _ in range(args.repeat):  # interleaved: both graphs see the same machine noise
            for name, (_, s) in runs.items():
                times[name] += time_it(lambda s=s: s.run(None, feeds), 0, 1)
        updates = floors.scan_state_updates()  # elementwise, not in the floor
        for name, (file, _) in runs.items():
            record(name, file, times[name], work["video_mamba"], scan_state_updates=updates)
        del runs
    for stage, key, inputs in (
        ("image_projector", M.IMAGE_PROJECTOR, {"image_features": features}),
        ("video_projector", M.VIDEO_PROJECTOR, {"video_features": video_features}),
    ):
        if wanted(stage):
            file = stages[key][M.S_FILE]
            s = session(file)
            record(stage, file, bench(lambda s=s, f=inputs: s.run(None, f)), work[stage])
            del s
    if wanted("embed_tokens"):
        file = stages[M.EMBED_TOKENS][M.S_FILE]
        s = session(file)
        text = {"input_ids": np.concatenate([prefix, suffix]).astype(np.int64)[None]}
        record("embed_tokens", file, bench(lambda: s.run(None, text)), work["embed_tokens"])
        del s
    gc.collect()

    def bench_decoder(label: str, file: str, custom_op: str | None) -> None:
        s = session(file, custom_op)
        weight_bytes = floors.initializer_bytes(os.path.join(folder, file))
        embeds = 0.02 * rng.standard_normal((1, prompt_length, dims["hidden"]), np.float32)
        layers, kv_heads = dims["layers"], int(man[M.K_DECODER]["num_key_value_heads"])
        head_dim = int(man[M.K_DECODER]["head_dim"])
        decoder = Decoder(s, man[M.K_DECODER], stage_io(man, M.DECODER))  # the runtime's way
        step = chunk or prompt_length

        def prefill() -> None:
            decoder.prefill(embeds, decoder.new_cache(prompt_length + 1), step)

        need, computed = floors.decoder_work(dims, prompt_length, 0, weight_bytes)
        extra = {"sequence": prompt_length, "prefill_chunk": step, "graph_flops": computed}
        record(f"{label} prefill", file, bench(prefill), need, **extra)

        # one token after a full cache of random keys/values; the step rewrites the same slot
        cache = decoder.new_cache(prompt_length + 1)
        shape = (1, kv_heads, prompt_length + 1, head_dim)
        cache.load(
            [0.5 * rng.standard_normal(shape, np.float32) for _ in range(layers)],
            [0.5 * rng.standard_normal(shape, np.float32) for _ in range(layers)],
        )
        token = embeds[:, -1:].copy()

        def decode() -> None:
            cache.length = prompt_length
            decoder.run(token, cache)

        decode_repeat = max(args.repeat, 10)
        times = time_it(decode, args.warmup + 1, decode_repeat)
        need, computed = floors.decoder_work(dims, 1, prompt_length, weight_bytes)
        extra = {"past": prompt_length, "weight_bytes": weight_bytes, "graph_flops": computed}
        extra["tokens_per_s"] = 1.0 / summary(times)["median_s"]
        record(f"{label} decode", file, times, need, **extra)

    if wanted("decoder"):
        entry = stages[M.DECODER]
        op = M.CUSTOM_OP_STAGES[M.DECODER] if M.S_PORTABLE_FILE in entry else None
        bench_decoder("decoder", entry[M.S_FILE], op)
        gc.collect()
        if entry.get(M.S_PORTABLE_FILE):  # onnxruntime's attention kernel, same weights
            bench_decoder("decoder[portable]", entry[M.S_PORTABLE_FILE], None)
            gc.collect()

    # the peaks again: the best of both measurements is the floor's peak
    for kind in peaks:
        peaks[kind] = max(peaks[kind], floors.measure_matmul_peak(kind, args.threads))
    bandwidth = max(bandwidth, floors.measure_bandwidth(args.threads))
    for row in results:
        for kind in peaks:
            peaks[kind] = max(peaks[kind], row["local_peaks"][kind])
        bandwidth = max(bandwidth, row["local_peaks"]["bandwidth"])
    machine = {"bench": "stages", "stage": "machine", "fp32_matmul_flops": peaks["fp32"]}
    machine |= {"int8_matmul_flops": peaks["int8"], "copy_bandwidth_bytes": bandwidth}
    emit(machine | {"cpu_flags": cpu_flags(), "prompt_length": prompt_length, **env})
    for row in results:  # floors with the best peaks seen
        peak_w = peaks["int8"] if row["weights_kernel"] == "int8" else peaks["fp32"]
        need = floors.Work(row["weight_flops"], row["flops"] - row["weight_flops"], row["bytes"])
        row["floor_s"], row["bound"] = need.floor(peak_w, peaks["fp32"], bandwidth)
        row["x_above_floor"] = row["median_s"] / row["floor_s"]
        local = row["local_peaks"]
        peak_l = local["int8"] if row["weights_kernel"] == "int8" else local["fp32"]
        row["local_floor_s"] = need.floor(peak_l, local["fp32"], local["bandwidth"])[0]
        row["x_above_local_floor"] = row["median_s"] / row["local_floor_s"]
        emit(row | env)

    print(
        f"\nmachine: {env['cpu']} ({', '.join(cpu_flags())}), {args.threads} threads; "
        f"ORT fp32 MatMul {peaks['fp32'] / 1e9:.0f} GFLOP/s, int8 MatMulInteger "
        f"{peaks['int8'] / 1e9:.0f} GOP/s, numpy copy {bandwidth / 1e9:.1f} GB/s (best seen); "
        f"prompt {prompt_length} positions; x local = against the peaks measured right after "
        "that stage"
    )
    columns = [("stage", 24), ("median s", 9), ("min s", 9), ("GFLOP", 8), ("MB", 7)]
    columns += [("floor s", 9), ("bound", 8), ("x floor", 8), ("x local", 8)]
    table = [
        [
            r["stage"],
            fmt(r["median_s"], ".4g"),
            fmt(r["min_s"], ".4g"),
            f"{r['flops'] / 1e9:.1f}",
            f"{r['bytes'] / 1e6:.0f}",
            fmt(r["floor_s"], ".4g"),
            r["bound"],
            fmt(r["x_above_floor"], ".1f"),
            fmt(r["x_above_local_floor"], ".1f"),
        ]
        for r in results
    ]
    print_table(columns, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
