"""GPU checks and benchmark (issue 15): the fp16 package on onnxruntime-gpu against fp32 on the
CPU and against the PyTorch reference on the same GPU. benchmarks/gpu_check.sh runs it after the
GPU tests; ``--provider cpu`` runs every part on the CPU (a dry run of the plumbing, not a result).

    python benchmarks/bench_gpu.py --work /tmp/mvgpt-gpu [--provider cuda] [--size 0.5b]
        [--videos 40] [--repeat 2] [--max-new-tokens 64] [--parts stages,builtin,speed,scan]

1. stages: a random checkpoint (--size) exported fp32 and converted to fp16 (``mvgpt-export
   --package``); each stage of the fp16 package on --provider against the fp32 package on the
   CPU, on the same inputs (the fp32 run's): cosine per stage (bar 0.999), the decoder over a
   prefill and greedy steps.
2. builtin: the built-in trained model converted to fp16, on --provider, against its fp32 package
   on the CPU over held-out videos (eval_toy's): identical answers (bar 99%) and each one's
   accuracy.
3. speed: time to first token, decode tokens/s and peak device memory of mvgpt fp16 on
   --provider and of the PyTorch reference (fp16 and bf16 eager, --size checkpoint) on the same
   GPU, same video and question, greedy; each configuration in its own process, rounds
   interleaved; ratios against the reference. The reference is this project's PyTorch model
   (models/), whose VideoMamba scan is a loop over time steps in Python (about 1569 x 64 small
   GPU launches per encoding), not the official code's fused mamba_ssm kernel (CUDA-only, not
   installable here): its time to first token is slower than the official stack's would be.
4. scan: SelectiveScan per call at VideoMamba-M's shape (1, 1152, 1569, 16): the library's CUDA
   kernel and the portable ONNX Scan on --provider (inputs and output bound on the device), and
   the CPU op.

Prints one JSON line per measurement, then a table per part.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import emit, environment, print_table  # noqa: E402

ROOT = HERE.parent
QUESTION = "What is happening in this video? Describe the actions in detail."
SCAN_SHAPE = (1, 1152, 1569, 16, True, True, True)  # VideoMamba-M, one direction of one layer


def versions() -> dict[str, str]:
    import numpy as np
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "numpy": np.__version__}


class DeviceMemory:
    """Peak GPU memory in use while the block runs, less what was in use before (nvidia-smi
    polled every 50 ms; whole-GPU figures, so run nothing else there). None without nvidia-smi."""

    def __enter__(self):
        self.base, self.peak, self._stop = self._used(), 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _used(self) -> int | None:
        cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        try:
            return int(subprocess.run(cmd, capture_output=True, text=True).stdout.split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            used = self._used()
            if used is not None:
                self.peak = max(self.peak, used)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> int | None:
        return None if self.base is None else max(0, self.peak - self.base)


# ---------------------------------------------------------------- packages
def packages(work: Path, size: str) -> tuple[Path, Path, Path]:
    """(checkpoint folder, fp32 package, fp16 package) of a random ``size`` checkpoint, made once
    under ``work``."""
    from mvgpt.exporter.package import convert_package, export_package
    from mvgpt.models.random_checkpoint import write_random_checkpoint

    ckpt = work / f"ckpt-{size}"
    if not (ckpt / "checkpoint" / "config.json").is_file():
        write_random_checkpoint(ckpt, size, seed=0)
    fp32, fp16 = work / f"pkg-{size}-fp32", work / f"pkg-{size}-fp16"
    if not (fp32 / "manifest.json").is_file():
        export_package(ckpt / "checkpoint", ckpt / "clip", fp32)
    if not (fp16 / "manifest.json").is_file():
        convert_package(fp32, fp16, precision="fp16")
    return ckpt, fp32, fp16


# ---------------------------------------------------------------- 1. stages
def stage_cosines(fp32: Path, fp16: Path, provider: str, video: str) -> dict[str, float]:
    """Cosine of each stage's output, fp16 package on ``provider`` vs fp32 on the CPU, every
    stage fed the fp32 run's inputs."""
    import numpy as np

    from mvgpt.exporter.agreement import compare
    from mvgpt.runtime import manifest as M
    from mvgpt.runtime.pipeline import Pipeline

    ref, half = Pipeline.load(fp32), Pipeline.load(fp16, provider)
    frames, positions = ref._frames(video)
    clip_pixels, mamba_pixels = ref.preprocess(frames)
    out: dict[str, float] = {}
    feats = ref.clip_features(clip_pixels)
    out[M.CLIP_VISION] = compare([half.clip_features(clip_pixels)], [feats])[1]
    enc = ref.encode_features(feats, mamba_pixels, positions)
    chosen = np.ascontiguousarray(
        mamba_pixels[list(enc.selected_frames)].transpose(1, 0, 2, 3)[None]
    )
    runs = {}
    for name, pipe in (("ref", ref), ("half", half)):
        runs[name] = {
            M.VIDEO_MAMBA: pipe._run(M.VIDEO_MAMBA, M.R_VIDEO_FEATURES, {M.R_PIXEL_VALUES: chosen}),
            M.IMAGE_PROJECTOR: pipe._run(
                M.IMAGE_PROJECTOR, M.R_IMAGE_TOKENS, {M.R_IMAGE_FEATURES: feats}
            ),
        }
    video_features = runs["ref"][M.VIDEO_MAMBA]
    for name, pipe in (("ref", ref), ("half", half)):
        runs[name][M.VIDEO_PROJECTOR] = pipe._run(
            M.VIDEO_PROJECTOR, M.R_VIDEO_TOKENS, {M.R_VIDEO_FEATURES: video_features}
        )
    for stage in (M.VIDEO_MAMBA, M.IMAGE_PROJECTOR, M.VIDEO_PROJECTOR):
        out[stage] = compare([runs["half"][stage]], [runs["ref"][stage]])[1]
    ids = ref.prompt_ids(QUESTION)
    embeds = {name: pipe._embed(ids) for name, pipe in (("ref", ref), ("half", half))}
    out[M.EMBED_TOKENS] = compare([embeds["half"]], [embeds["ref"]])[1]
    # decoder: the same embeddings (fp32's, with the visual tokens), a prefill, then 8 steps
    # on the fp32 decoder's greedy tokens
    prefix, suffix = ref.split_prompt(ids)
    full = np.concatenate([ref._embed(prefix)[0], enc.visual, ref._embed(suffix)[0]])[None]
    tokens: list[int] = []
    logits = {}
    for name, pipe in (("ref", ref), ("half", half)):
        cache = pipe.decoder.new_cache(full.shape[1] + 16)
        rows = [pipe.decoder.prefill(full, cache).copy()]
        for step in range(8):
            if name == "ref":
                tokens.append(int(np.argmax(rows[-1])))
            rows.append(pipe.decoder.run(ref._embed(np.array([tokens[step]])), cache).copy())
        logits[name] = np.stack(rows)
    out[M.DECODER] = compare([logits["half"]], [logits["ref"]])[1]
    return out


# ---------------------------------------------------------------- 2. builtin
def builtin_agreement(work: Path, provider: str, videos: int) -> dict:
    """The built-in model fp16 on ``provider`` vs fp32 on the CPU over held-out videos."""
    from eval_toy import by_video, video_set

    from mvgpt.exporter.package import convert_package
    from mvgpt.runtime.default_model import builtin_package
    from mvgpt.runtime.pipeline import Pipeline

    fp16 = work / "builtin-fp16"
    if not (fp16 / "manifest.json").is_file():
        convert_package(builtin_package(), fp16, precision="fp16")
    ref, half = Pipeline.load(builtin_package()), Pipeline.load(fp16, provider)
    rows = video_set(work / "videos", "heldout", videos, edge=False)
    same = right_ref = right_half = total = 0
    for video, questions in by_video(rows).items():
        encodings = (ref.encode(video), half.encode(video))
        for q in questions:
            a = ref.answer(encodings[0], q["question"], max_new_tokens=4).text.strip()
            b = half.answer(encodings[1], q["question"], max_new_tokens=4).text.strip()
            same += a == b
            right_ref += a == q["answer"]
            right_half += b == q["answer"]
            total += 1
    return {"questions": total, "identical": same / total, "fp32_cpu_accuracy": right_ref / total,
            "fp16_accuracy": right_half / total}  # fmt: skip


# ---------------------------------------------------------------- 3. speed
def speed_worker(config: dict, video: str, max_new_tokens: int) -> dict:
    """One configuration's answer, timed, in this process. Device memory is measured the same
    way for both engines, over the untimed load and warm-up answer (nvidia-smi's polling would
    disturb the timed one): the GPU's memory in use at its peak less before the load (weights,
    caches, the CUDA context and the allocators' reserve)."""
    if config["engine"] == "reference":
        import torch

        from mvgpt.models.reference_runner import ReferenceRunner

        with DeviceMemory() as memory:
            runner = ReferenceRunner(config["checkpoint"], config["clip"], config["dtype"], "cuda")
            runner.answer(video, QUESTION, max_new_tokens, do_sample=False)  # warm-up
        result = runner.answer(video, QUESTION, max_new_tokens, do_sample=False)
        s, tokens = result.seconds, len(result.token_ids)
        decode = s["generate"] - s["ttft_after_encode"]
        return {
            "ttft_s": s["decode_video"] + s["encode"] + s["ttft_after_encode"],
            "decode_tokens_per_s": (tokens - 1) / decode if tokens > 1 and decode > 0 else None,
            "peak_device_mib": memory.mib,
            "torch_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "token_ids": list(result.token_ids),
        }
    from mvgpt.runtime.pipeline import Pipeline

    with DeviceMemory() as memory:
        pipe = Pipeline.load(config["model"], config["provider"])
        pipe.answer(video, QUESTION, max_new_tokens=max_new_tokens)  # warm-up
    answer = pipe.answer(video, QUESTION, max_new_tokens=max_new_tokens)
    return {
        "ttft_s": answer.ttft_s,
        "decode_tokens_per_s": answer.decode_tokens_per_s,
        "peak_device_mib": memory.mib,
        "token_ids": list(answer.token_ids),
        "notes": list(pipe.package.notes),
    }


def speed(ckpt: Path, fp16: Path, provider: str, video: str, args) -> list[dict]:
    configs = [{"name": f"mvgpt fp16 ({provider})", "engine": "mvgpt", "model": str(fp16),
                "provider": provider}]  # fmt: skip
    if provider == "cuda":
        for dtype in ("fp16", "bf16"):
            configs.append({"name": f"reference {dtype} (torch cuda)", "engine": "reference",
                            "dtype": dtype, "checkpoint": str(ckpt / "checkpoint"),
                            "clip": str(ckpt / "clip")})  # fmt: skip
    rows = []
    for round_ in range(args.repeat):
        for config in configs:
            cmd = [sys.executable, __file__, "--worker", json.dumps(config), "--video", video,
                   "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                row = {"config": config["name"], "error": run.stderr.strip()[-800:]}
            else:
                row = {"config": config["name"], **json.loads(run.stdout.strip().splitlines()[-1])}
            row |= {"bench": "gpu_speed", "round": round_}
            emit(row | environment(0, versions(), provider))
            rows.append(row)
    return rows


# ---------------------------------------------------------------- 4. scan
def scan_times(provider: str, repeat: int = 20) -> dict[str, float | None]:
    """Median ms per SelectiveScan call at SCAN_SHAPE: the CUDA kernel and the portable Scan on
    ``provider`` (device-bound I/O), the CPU op."""
    import numpy as np
    import onnxruntime as ort

    from mvgpt import kernels
    from mvgpt.kernels import portable
    from mvgpt.runtime.package import PROVIDERS, check_provider_started
    from mvgpt.runtime.sessions import session_options

    feeds = portable.random_inputs(*SCAN_SHAPE, seed=0)
    out: dict[str, float | None] = {}
    cases = [("mvgpt op", False, provider), ("portable Scan", True, provider)]
    cases += [("mvgpt op", False, "cpu")] if provider != "cpu" else []
    for name, is_portable, where in cases:
        model = portable.scan_model(*SCAN_SHAPE, portable=is_portable).SerializeToString()
        options = session_options(custom_op=None if is_portable else "SelectiveScan")
        providers = [PROVIDERS[where]] + (["CPUExecutionProvider"] if where != "cpu" else [])
        session = ort.InferenceSession(model, options, providers=providers)
        check_provider_started(f"{name} on {where}", session, where)  # no silent CPU run
        device = "cuda" if where == "cuda" else "cpu"
        binding = session.io_binding()
        for arg in session.get_inputs():
            binding.bind_ortvalue_input(
                arg.name,
                ort.OrtValue.ortvalue_from_numpy(feeds[arg.name].astype(np.float32), device, 0),
            )
        binding.bind_output(session.get_outputs()[0].name, device, 0)
        times = []
        for i in range(repeat + 2):
            start = time.perf_counter()
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            if i >= 2:
                times.append((time.perf_counter() - start) * 1e3)
        key = f"{name} on {where}"
        if not is_portable:  # the path the op really took (no CUDA kernel: the CPU's, with copies)
            key += f" ({kernels.last_isa('SelectiveScan')})"
        out[key] = statistics.median(times)
        emit({"bench": "gpu_scan", "config": key, "median_ms": out[key], "shape": SCAN_SHAPE[:4]}
             | environment(0, versions(), where))  # fmt: skip
    return out


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mvgpt-gpu"))
    parser.add_argument("--provider", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--size", default="0.5b", help="random checkpoint size (tiny: dry runs)")
    parser.add_argument("--videos", type=int, default=40, help="held-out videos (builtin)")
    parser.add_argument("--repeat", type=int, default=2, help="speed rounds")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--parts", default="stages,builtin,speed,scan")
    parser.add_argument("--video", default=str(ROOT / "runtime" / "builtin" / "sample.mp4"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        emit(speed_worker(json.loads(args.worker), args.video, args.max_new_tokens))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    env = environment(0, versions(), args.provider)
    ckpt, fp32, fp16 = packages(args.work, args.size)
    if "stages" in parts:
        cosines = stage_cosines(fp32, fp16, args.provider, args.video)
        emit({"bench": "gpu_stages", "size": args.size, "cosine": cosines} | env)
        table = [[k, f"{v:.6f}", "ok" if v >= 0.999 else "LOW"] for k, v in cosines.items()]
        print_table([("stage", 18), ("cosine", 10), ("bar", 6)], table)
    if "builtin" in parts:
        agreement = builtin_agreement(args.work, args.provider, args.videos)
        emit({"bench": "gpu_builtin", **agreement} | env)
        table = [[k, f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in agreement.items()]
        print_table([("built-in model", 22), ("value", 10)], table)
    if "speed" in parts:
        rows = [r for r in speed(ckpt, fp16, args.provider, args.video, args) if "error" not in r]
        by_config: dict[str, list[dict]] = {}
        for row in rows:
            by_config.setdefault(row["config"], []).append(row)

        def med(config: str, key: str) -> float | None:
            values = [r[key] for r in by_config.get(config, []) if r.get(key) is not None]
            return statistics.median(values) if values else None

        ref = "reference fp16 (torch cuda)"
        table = []
        for config in by_config:
            ttft, tps = med(config, "ttft_s"), med(config, "decode_tokens_per_s")
            ref_ttft, ref_tps = med(ref, "ttft_s"), med(ref, "decode_tokens_per_s")
            table.append([config, f"{ttft:.3f}" if ttft else "-",
                          f"{ttft / ref_ttft:.2f}" if ttft and ref_ttft else "-",
                          f"{tps:.1f}" if tps else "-",
                          f"{tps / ref_tps:.2f}" if tps and ref_tps else "-",
                          str(round(med(config, "peak_device_mib") or 0))])  # fmt: skip
        print_table([("configuration", 30), ("ttft s", 8), ("x ref", 6), ("tok/s", 8),
                     ("x ref", 6), ("peak MiB", 9)], table)  # fmt: skip
    if "scan" in parts:
        times = scan_times(args.provider)
        print_table([("SelectiveScan (1,1152,1569,16)", 34), ("median ms", 10)],
                    [[k, f"{v:.3f}"] for k, v in times.items()])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
