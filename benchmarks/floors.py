"""Lower bounds for the benchmark stages: measured machine peaks and counted work.

- ``measure_matmul_peak``: FLOP/s of one onnxruntime MatMul (fp32) or MatMulInteger (uint8 x int8)
  graph of an (M, K) x (K, N) product, by default 2450 x 896 x 4864 (a Qwen2.5-0.5B MLP at prompt
  length) — the best throughput this machine's ORT CPU kernels reach on a big, well-shaped product.
- ``measure_bandwidth``: bytes/s of a numpy copy of a large array (read + write counted), in as
  many threads as the stages use.
- ``Work``: the FLOPs (split into weight-matrix and activation-matrix work) and bytes a stage must
  touch; its floor is the larger of FLOPs / peak and bytes / bandwidth.
- ``stage_work`` / ``decoder_work``: those counts for each graph of a package, from the model
  shapes (mvgpt.models.config defaults for the vision side, the manifest for the decoder).
- ``measure_fma_peak``: lane-FMAs/s at one vector width (scalar, AVX2, AVX-512), from a small C++
  loop (fma_peak.cc) compiled and run at benchmark time: no clock is assumed.
- ``SCAN_FMA_OPS`` / ``scan_fma_floor``: the FMA-pipe operations the selective scan's math needs
  per state update, and the time they take at a measured FMA peak (bench_scan.py's floor).

Only matrix products count as FLOPs: layer norms, softmax, GELU and the selective scan's
elementwise recurrence are left out, so a stage whose time is dominated by them sits far above its
floor by construction (the tables say so).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Qwen2.5 intermediate sizes by hidden size, for manifests that do not carry intermediate_size
QWEN_INTERMEDIATE = {896: 4864, 1536: 8960, 2048: 11008}
INTEGER_MATMUL_OPS = {
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QLinearMatMul",
    "MatMulNBits",
    "QAttention",
}


@dataclass(frozen=True)
class Work:
    """What a stage must do at least: weight-matrix FLOPs (may run in int8), activation FLOPs
    (always fp32 here), bytes that must stream from memory."""

    weight_flops: float = 0.0
    activation_flops: float = 0.0
    bytes: float = 0.0

    @property
    def flops(self) -> float:
        return self.weight_flops + self.activation_flops

    def floor(self, peak_weights: float, peak_fp32: float, bandwidth: float) -> tuple[float, str]:
        """(seconds, "compute" | "memory"): the binding lower bound."""
        compute = self.weight_flops / peak_weights + self.activation_flops / peak_fp32
        memory = self.bytes / bandwidth
        return (compute, "compute") if compute >= memory else (memory, "memory")


def _session(model, threads: int):
    import onnxruntime as ort

    from mvgpt.runtime.sessions import session_options

    options = session_options(threads)  # the runtime's
    return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])


def measure_matmul_peak(
    kind: str, threads: int, m: int = 2450, k: int = 896, n: int = 4864, repeat: int = 5
) -> float:
    """Best FLOP/s of an ORT (m, k) x (k, n) product; kind "fp32" (MatMul, both inputs fed) or
    "int8" (MatMulInteger, uint8 activations x int8 weight initializer with zero points)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from mvgpt.runtime import manifest as M

    rng = np.random.default_rng(0)
    if kind == "fp32":
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_type, y_type, inits = TensorProto.FLOAT, TensorProto.FLOAT, [w]
    elif kind == "int8":
        a = rng.integers(0, 255, (m, k), dtype=np.uint8)
        w = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "w")
        a_zero = numpy_helper.from_array(np.array(128, np.uint8), "a_zero")
        w_zero = numpy_helper.from_array(np.array(0, np.int8), "w_zero")
        node = helper.make_node("MatMulInteger", ["a", "w", "a_zero", "w_zero"], ["y"])
        a_type, y_type, inits = TensorProto.UINT8, TensorProto.INT32, [w, a_zero, w_zero]
    else:
        raise ValueError(f"kind: expected fp32 or int8, got {kind!r}")
    graph = helper.make_graph(
        [node],
        f"peak_{kind}",
        [helper.make_tensor_value_info("a", a_type, [m, k])],
        [helper.make_tensor_value_info("y", y_type, [m, n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", M.OPSET)], ir_version=M.IR_VERSION
    )
    session = _session(model, threads)
    feeds = {"a": a}
    session.run(None, feeds)  # warm-up: weight prepacking, thread pool start
    best = min(_timed(lambda: session.run(None, feeds)) for _ in range(repeat))
    return 2.0 * m * k * n / best


def measure_bandwidth(threads: int = 1, mib: int = 512, repeat: int = 5) -> float:
    """Best bytes/s of numpy copying a `mib` MiB float32 array (read + write both counted), split
    into `threads` slices copied by as many threads (numpy releases the GIL while copying)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    src = np.ones(mib * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    with ThreadPoolExecutor(threads) as pool:

        def copy() -> None:
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), slices))

        copy()  # fault the pages in before timing
        best = min(_timed(copy) for _ in range(repeat))
    return 2.0 * src.nbytes / best


FMA_PEAK_SOURCE = Path(__file__).resolve().parent / "fma_peak.cc"
# lanes and compiler flags per instruction set of the kernels (mvgpt.kernels.cpu_isas names)
FMA_WIDTHS = {
    "scalar": (1, ["-mfma"]),
    "avx2": (8, ["-mavx2", "-mfma"]),
    "avx512": (16, ["-mavx512f", "-mfma"]),
}


def measure_fma_peak(isa: str, threads: int = 1) -> float:
    """Lane-FMAs per second of `threads` threads together at `isa`'s width (FMA_WIDTHS):
    fma_peak.cc compiled now with $CXX (default g++) -O2 and that width's flags, then run. Raises
    RuntimeError when it cannot be built or run (no compiler, a width this CPU lacks)."""
    if isa not in FMA_WIDTHS:
        raise ValueError(f"isa: expected one of {', '.join(FMA_WIDTHS)}, got {isa!r}")
    width, flags = FMA_WIDTHS[isa]
    compiler = os.environ.get("CXX", "g++")
    with tempfile.TemporaryDirectory(prefix="fma_peak-") as tmp:
        exe = Path(tmp) / "fma_peak"
        cmd = [compiler, "-O2", *flags, f"-DWIDTH={width}", str(FMA_PEAK_SOURCE), "-o", str(exe)]
        steps = (cmd + ["-pthread"], [str(exe), str(threads)])
        for step in steps:
            try:
                run = subprocess.run(step, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise RuntimeError(f"fma_peak ({isa}): '{step[0]}' failed: {e}") from e
            if run.returncode != 0:
                raise RuntimeError(
                    f"fma_peak ({isa}): '{' '.join(step)}' exited {run.returncode}: "
                    f"{run.stderr.strip()[-300:]}"
                )
    return float(run.stdout.split()[0])


# FMA-pipe operations the selective scan's math needs per state update (channel, step, state):
# dt * A (1 multiply), 2^f by the degree-5 polynomial the 1e-7 numerics contract needs (5 FMAs),
# dt * u * B (1 multiply: dt * u is per (channel, step)), the state update h = decay * h + that
# (1 FMA) and the output sum y += C h (1 FMA). Not counted: the exponent's range reduction and 2^k
# scaling (adds, a round, integer ops: other pipes on AMD, the FMA ports on Intel), softplus,
# silu and D * u (per (channel, step), 1/N of a state update each), loads, stores and memory.
SCAN_FMA_OPS = 9


def scan_fma_floor(updates: int, lane_fmas_per_s: float) -> float:
    """Seconds for `updates` state updates at SCAN_FMA_OPS each and a measured FMA peak."""
    return updates * SCAN_FMA_OPS / lane_fmas_per_s


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def uses_integer_matmul(path: str) -> bool:
    """True when the ONNX graph at `path` runs its matrix products on integer kernels."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return any(node.op_type in INTEGER_MATMUL_OPS for node in model.graph.node)


def initializer_bytes(path: str) -> int:
    """Bytes of all initializers of the ONNX graph at `path` (external data included)."""
    import onnx
    from onnx import helper

    model = onnx.load(path, load_external_data=False)
    total = 0.0
    for init in model.graph.initializer:
        numel = 1
        for dim in init.dims:
            numel *= dim
        if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            total += numel / 2
        else:
            total += numel * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return int(total)


# ---------------------------------------------------------------------------- counted work


def stage_work(manifest: dict, prompt_text_tokens: int) -> dict[str, Work]:
    """Work of the vision stages, the projectors and embed_tokens for one 16-frame video."""
    from mvgpt.models.config import ClipVisionConfig, ProjectorConfig, VideoMambaConfig

    clip, mamba = ClipVisionConfig(), VideoMambaConfig()
    sampling = manifest["sampling"]
    hidden = int(manifest["decoder"]["hidden_size"])
    proj = ProjectorConfig(hidden_size=hidden)
    num_frames, chunk = int(sampling["num_frames"]), int(sampling["chunk_size"])
    num_chunks = num_frames // chunk
    patches = clip.num_patches  # 196
    work: dict[str, Work] = {}

    # CLIP: layers up to select_layer (-2 -> 11 of 12), 197 tokens per frame
    layers = clip.num_hidden_layers + 1 + clip.select_layer
    tokens, d, inter = patches + 1, clip.hidden_size, clip.intermediate_size
    per_layer = 4 * d * d + 2 * d * inter
    patch_embed = 2 * num_frames * patches * d * (clip.num_channels * clip.patch_size**2)
    work["clip_vision"] = Work(
        weight_flops=2 * num_frames * tokens * layers * per_layer + patch_embed,
        activation_flops=4 * num_frames * tokens**2 * d * layers,  # QK^T and PV
    )
    # frame scorer: one (N, D) x (D, N) product per chunk, N = chunk_size * 196
    n = chunk * patches
    work["frame_scorer"] = Work(activation_flops=2 * num_chunks * n * n * clip.hidden_size)

    # VideoMamba-M: 8 frames x 196 patches + CLS, bidirectional mixers sharing in/out proj
    length = mamba.num_frames * mamba.num_patches + 1
    c, e = mamba.embed_dim, mamba.d_inner
    xdt = mamba.dt_rank + 2 * mamba.d_state
    per_layer = c * 2 * e + e * c + 2 * (e * xdt + mamba.dt_rank * e)
    patch_embed = 2 * mamba.num_frames * mamba.num_patches * c * (3 * mamba.patch_size**2)
    work["video_mamba"] = Work(weight_flops=2 * length * mamba.depth * per_layer + patch_embed)

    # projectors: MLP on 196 tokens, pooling matrix, depthwise 3x3 PEG
    def projector(batch: int, in_dim: int, grid: int) -> Work:
        mlp = 2 * batch * 196 * (in_dim * hidden + hidden * hidden)
        pool = 2 * batch * grid * grid * 196 * hidden
        peg = 2 * batch * grid * grid * hidden * 9
        return Work(weight_flops=mlp, activation_flops=pool + peg)

    work["image_projector"] = projector(num_frames, proj.image_in, proj.image_grid)
    work["video_projector"] = projector(num_chunks, proj.video_in, proj.video_grid)
    # embed_tokens: a gather; read and write one row per token
    work["embed_tokens"] = Work(bytes=2 * prompt_text_tokens * hidden * 4)
    return work


def scan_state_updates() -> int:
    """State updates of VideoMamba-M's selective scans: 2 directions x depth x D x N x L."""
    from mvgpt.models.config import VideoMambaConfig

    m = VideoMambaConfig()
    length = m.num_frames * m.num_patches + 1
    return 2 * m.depth * m.d_inner * m.d_state * length


def decoder_dims(manifest: dict) -> dict[str, int]:
    """hidden, intermediate, layers, heads, kv_dim, vocab of the package's decoder."""
    dec = manifest["decoder"]
    hidden, head_dim = int(dec["hidden_size"]), int(dec["head_dim"])
    inter = int(dec.get("intermediate_size") or QWEN_INTERMEDIATE[hidden])
    return {
        "hidden": hidden,
        "intermediate": inter,
        "layers": int(dec["num_hidden_layers"]),
        "kv_dim": int(dec["num_key_value_heads"]) * head_dim,
        "vocab": int(dec["vocab_size"]),
    }


def decoder_work(
    dims: dict[str, int], sequence: int, past: int, weight_bytes: float = 0.0, kv_itemsize: int = 4
) -> tuple[Work, float]:
    """(needed Work, FLOPs the exported graph does) for `sequence` new tokens after `past`.

    Needed: every layer's projections for each token, causal attention, and logits for the last
    token only. The exported graph computes logits for every position it is given, so its count
    adds the LM head for all but one of them. Bytes: the weights plus the past keys/values read.
    """
    h, i, layers, kv, v = (dims[k] for k in ("hidden", "intermediate", "layers", "kv_dim", "vocab"))
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i
    linear = 2 * sequence * layers * per_layer + 2 * h * v
    # causal attention: QK^T and PV, each query sees past + its own prefix
    seen = sequence * past + sequence * (sequence + 1) / 2
    attention = 4 * seen * h * layers
    kv_bytes = 2 * layers * past * kv * kv_itemsize
    needed = Work(linear, attention, weight_bytes + kv_bytes)
    computed = needed.flops + 2 * (sequence - 1) * h * v
    return needed, computed
