"""Test helper for the two custom ops' kernels: random cases, float64 references, the ONNX graph of
the attention op, and the kernel check program (kernels/check/kernel_check.cc) - building it,
writing a case file, running it (natively or under an emulator) and reading its output.

The attention case (``feeds``) and reference (``naive_step``) are shared by the onnxruntime tests
(tests/unit/test_attention_kernel.py) and the emulated ones (tests/unit/test_kernels_emulated.py).
"""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from mvgpt.kernels import build
from mvgpt.runtime.manifest import CUSTOM_OP_ATTENTION, CUSTOM_OP_DOMAIN, IR_VERSION, OPSET

CHECK_SOURCE = build.KERNEL_DIR / "check" / "kernel_check.cc"
MAX_POS = 4096  # rotary table rows: room for the long-cache tests
THETA = 10000.0
# What the tests accept of a float32 kernel against float64 (seen: ~1e-6)
SCAN_MAX_REL = 2e-5  # max |y - ref| / max(1, max |ref|)
ATTENTION_MAX_ABS = 2e-5  # max |out - ref|; new key rows (rotated): 1e-5; value rows: exact
KEY_MAX_ABS = 1e-5


# ---------------------------------------------------------------- instruction sets
LANES = {"scalar": 1, "neon": 4, "avx2": 8, "avx512": 16}  # kernels/cpu.h's, narrowest first


def _numpy_cpu_features() -> dict[str, bool] | None:
    """numpy's own CPUID probe (its SIMD dispatch): what this process's CPU reports - under qemu's
    user-mode emulation the emulated model's features, where /proc/cpuinfo shows the host's."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return None
    return dict(__cpu_features__)


def probed_isas(cpuinfo: str = "/proc/cpuinfo", machine: str | None = None) -> list[str] | None:
    """The kernels' instruction sets this CPU has, narrowest first, probed apart from the
    library's own probe: numpy's CPUID probe where it has the flags, else /proc/cpuinfo; None
    where neither answers."""
    machine = machine or platform.machine()
    features = _numpy_cpu_features() if cpuinfo == "/proc/cpuinfo" else None
    if features and machine in ("x86_64", "AMD64") and "AVX2" in features:
        isas = ["scalar"]
        if features.get("AVX2") and features.get("FMA3"):
            isas.append("avx2")
            if features.get("AVX512F") and features.get("AVX512DQ"):
                isas.append("avx512")
        return isas
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = set(re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.M).group(1).split())
    isas = ["scalar"]
    if machine in ("aarch64", "arm64") and "asimd" in flags:
        isas.append("neon")
    if machine in ("x86_64", "AMD64") and {"avx2", "fma"} <= flags:
        isas.append("avx2")
        if {"avx512f", "avx512dq"} <= flags:
            isas.append("avx512")
    return isas


def attention_isa(cpu: list[str], head_dim: int, cap: str | None = None) -> str:
    """attention_kernel.h's rule: the widest set up to ``cap`` (default: the widest) that the CPU
    has and whose width divides head_dim."""
    allowed = [i for i in LANES if i in cpu]
    allowed = allowed[: allowed.index(cap) + 1] if cap else allowed
    return [i for i in allowed if head_dim % LANES[i] == 0][-1]


# ---------------------------------------------------------------- SelectiveScan
def scan_reference(feeds: dict[str, np.ndarray], softplus: bool) -> np.ndarray:
    """The selective scan in float64, one time step at a time over all (batch, channel, state)."""
    u, delta, A, B, C, D = (feeds[k].astype(np.float64) for k in ("u", "delta", "A", "B", "C", "D"))
    dt = delta + (0.0 if "delta_bias" not in feeds else feeds["delta_bias"][None, :, None])
    if softplus:
        dt = np.logaddexp(0.0, dt)  # log(1 + e^dt) without overflow
    batch, dim, length = u.shape
    h = np.zeros((batch, dim, A.shape[1]))  # (B, D, N)
    y = np.empty_like(u)
    for t in range(length):
        decay = np.exp(dt[:, :, t, None] * A)  # (B, D, N)
        drive = (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]  # (B, D, N)
        h = decay * h + drive
        y[:, :, t] = np.einsum("bdn,bn->bd", h, C[:, :, t])
    y += D[None, :, None] * u
    if "z" in feeds:
        z = feeds["z"].astype(np.float64)
        y *= z / (1.0 + np.exp(-z))
    return y


def scan_max_rel(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / max(1.0, float(np.abs(ref).max())))


def write_scan_case(path: Path, feeds: dict[str, np.ndarray], softplus: bool) -> None:
    batch, dim, length = feeds["u"].shape
    header = [batch, dim, length, feeds["A"].shape[1], "z" in feeds, "delta_bias" in feeds]
    arrays = [feeds[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias") if k in feeds]
    with open(path, "wb") as f:
        f.write(b"MVGSCAN1" + np.array([*header, softplus], "<i8").tobytes())
        for a in arrays:
            f.write(np.ascontiguousarray(a, "<f4").tobytes())


# ---------------------------------------------------------------- decode attention
def attention_model(
    nh: int, kvh: int, hd: int, packed: bool, rotary: bool = True, domain=CUSTOM_OP_DOMAIN
):
    """One GroupQueryAttention node (mvgpt's, or com.microsoft's with ``domain``)."""
    f = TensorProto.FLOAT
    width = (nh + 2 * kvh) * hd if packed else nh * hd
    names = ["q", "" if packed else "k", "" if packed else "v", "pk", "pv", "sl", "tot"]
    names += ["cos", "sin"] if rotary else []
    node = helper.make_node(
        CUSTOM_OP_ATTENTION,
        names,
        ["o", "prk", "prv"],
        domain=domain,
        num_heads=nh,
        kv_num_heads=kvh,
        scale=hd**-0.5,
        do_rotary=int(rotary),
    )
    inputs = [helper.make_tensor_value_info("q", f, ["B", "S", width])]
    if not packed:
        inputs += [helper.make_tensor_value_info(n, f, ["B", "S", kvh * hd]) for n in "kv"]
    inputs += [helper.make_tensor_value_info(n, f, ["B", kvh, "P", hd]) for n in ("pk", "pv")]
    inputs += [
        helper.make_tensor_value_info("sl", TensorProto.INT32, ["B"]),
        helper.make_tensor_value_info("tot", TensorProto.INT32, []),
    ]
    if rotary:
        inputs += [helper.make_tensor_value_info(n, f, [MAX_POS, hd // 2]) for n in ("cos", "sin")]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("o", "prk", "prv")]
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(domain, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def tables(hd: int) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / THETA ** (np.arange(0, hd, 2) / hd)
    angles = np.arange(MAX_POS)[:, None] * inv[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def feeds(rng, nh, kvh, hd, lengths, cache, packed, rotary=True, seq=1):
    """Random inputs for rows whose positions in use are ``lengths`` (before this call)."""
    batch = len(lengths)
    q = rng.standard_normal((batch, seq, nh * hd), np.float32)
    k = rng.standard_normal((batch, seq, kvh * hd), np.float32)
    v = rng.standard_normal((batch, seq, kvh * hd), np.float32)
    out = {
        "pk": rng.standard_normal((batch, kvh, cache, hd), np.float32),
        "pv": rng.standard_normal((batch, kvh, cache, hd), np.float32),
        "sl": np.array([n + seq - 1 for n in lengths], np.int32),
        "tot": np.array(max(lengths) + seq, np.int32),
    }
    out.update({"q": np.concatenate([q, k, v], -1)} if packed else {"q": q, "k": k, "v": v})
    if rotary:
        out["cos"], out["sin"] = tables(hd)
    return out


def rotate(x: np.ndarray, pos: int, hd: int) -> np.ndarray:
    """rotate-half RoPE of the last axis at one position, float64"""
    inv = 1.0 / THETA ** (np.arange(0, hd, 2) / hd)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def naive_step(f, nh, kvh, hd, packed, rotary=True):
    """One new position per row, float64: (output (B,1,nh*hd), new key rows, new value rows)."""
    q = f["q"][:, 0].astype(np.float64)
    if packed:
        q, k, v = np.split(q, [nh * hd, (nh + kvh) * hd], -1)
    else:
        k, v = f["k"][:, 0].astype(np.float64), f["v"][:, 0].astype(np.float64)
    batch, r = q.shape[0], nh // kvh
    out = np.zeros((batch, 1, nh * hd))
    new_k = np.zeros((batch, kvh, hd))
    for b in range(batch):
        pos = int(f["sl"][b])
        for g in range(kvh):
            kg = k[b, g * hd : (g + 1) * hd]
            new_k[b, g] = rotate(kg, pos, hd) if rotary else kg
            keys = np.concatenate([f["pk"][b, g, :pos].astype(np.float64), new_k[b, g][None]])
            vals = np.concatenate([f["pv"][b, g, :pos], v[b, g * hd : (g + 1) * hd][None]])
            for j in range(g * r, (g + 1) * r):
                qj = q[b, j * hd : (j + 1) * hd]
                qj = rotate(qj, pos, hd) if rotary else qj
                s = keys @ qj / np.sqrt(hd)
                p = np.exp(s - s.max())
                out[b, 0, j * hd : (j + 1) * hd] = (p / p.sum()) @ vals
    return out, new_k, v.reshape(batch, kvh, hd)


def write_attention_case(
    path: Path, f: dict[str, np.ndarray], nh: int, kvh: int, hd: int, in_place: bool
) -> None:
    """``f``: packed ``feeds`` of one position (rotary or not)."""
    batch, _, cache, _ = f["pk"].shape
    rows = f["cos"].shape[0] if "cos" in f else 0
    header = np.array([batch, nh, kvh, hd, cache, rows, in_place], "<i8")
    arrays = [np.float32(hd**-0.5), f["q"], f["sl"].astype("<i4"), f["pk"], f["pv"]]
    arrays += [f["cos"], f["sin"]] if rows else []
    with open(path, "wb") as out:
        out.write(b"MVGATTN1" + header.tobytes())
        for a in arrays:
            out.write(np.ascontiguousarray(a, a.dtype if a.dtype == np.int32 else "<f4").tobytes())


def read_attention_output(path: Path, f: dict[str, np.ndarray], nh: int, hd: int):
    """(output (B,1,nh*hd), present_key, present_value) as the program wrote them."""
    data = np.fromfile(path, "<f4")
    batch, n_out, kv = f["pk"].shape[0], f["pk"].shape[0] * nh * hd, f["pk"].size
    assert data.size == n_out + 2 * kv, f"{path}: {data.size} floats, expected {n_out + 2 * kv}"
    out, shape = data[:n_out].reshape(batch, 1, nh * hd), f["pk"].shape
    return out, data[n_out : n_out + kv].reshape(shape), data[n_out + kv :].reshape(shape)


def attention_diffs(f, got, nh, kvh, hd) -> tuple[float, float, bool]:
    """(max |out - ref|, max |new key rows - ref|, value rows and the past rows kept exactly)."""
    out, present_k, present_v = got
    want, new_k, new_v = naive_step(f, nh, kvh, hd, True, rotary="cos" in f)
    exact = True
    key_diff = 0.0
    for b, pos in enumerate(f["sl"]):
        key_diff = max(key_diff, float(np.abs(present_k[b, :, pos] - new_k[b]).max()))
        exact &= bool(np.array_equal(present_v[b, :, pos], new_v[b]))
        exact &= bool(np.array_equal(present_k[b, :, :pos], f["pk"][b, :, :pos]))
        exact &= bool(np.array_equal(present_v[b, :, :pos], f["pv"][b, :, :pos]))
    return float(np.abs(out - want).max()), key_diff, exact


# ---------------------------------------------------------------- simd.h's exp2 and max alone
def vector_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x: the edges of exp2's clamp (+-127, beyond, infinities, NaN) then random values; y: the
    other operand of max, NaN in places. 1024 floats each, a multiple of every width."""
    edges = [-np.inf, -1000, -200, -128, -127, -126.5, -126, -1, -0.0, 0, 0.5, 1, 126, 126.9, 127]
    edges += [127.5, 128, 1000, np.inf, np.nan]
    rng = np.random.default_rng(seed)
    x = np.concatenate([edges, rng.uniform(-140, 140, 1024 - len(edges))]).astype(np.float32)
    y = rng.standard_normal(1024).astype(np.float32)
    y[::7] = np.nan
    return x, y


def write_vector_case(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(b"MVGVECT1" + np.array([x.size], "<i8").tobytes())
        f.write(np.ascontiguousarray(x, "<f4").tobytes() + np.ascontiguousarray(y, "<f4").tobytes())


# ---------------------------------------------------------------- the check program
def build_check(compiler: str, output: Path) -> Path:
    """Compile kernels/check/kernel_check.cc with the library's flags and -Werror."""
    cmd = build.compile_command(compiler, [CHECK_SOURCE], output, None, shared=False, werror=True)
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stderr[-4000:]}"
    return output


def run_check(
    prefix: list[str], program: Path, case: Path, out: Path, isa: str = "", timeout: float = 120
) -> dict[str, str]:
    """Run the program (under ``prefix``, e.g. an emulator); its report, e.g. {'op': 'scan',
    'isa': 'neon'}. Raises CheckError with its stderr when it fails."""
    cmd = [*prefix, str(program), str(case), str(out), *([isa] if isa else [])]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise CheckError(run.returncode, run.stderr.strip())
    return dict(re.findall(r"(\w+)=(\S+)", run.stdout))


class CheckError(Exception):
    def __init__(self, code: int, stderr: str):
        super().__init__(f"kernel_check exited {code}: {stderr}")
        self.code, self.stderr = code, stderr
