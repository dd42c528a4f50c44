"""Test helper for the two custom ops' kernels: random cases, float64 references, the ONNX graph of
the attention op, and the instruction sets this CPU has by /proc/cpuinfo.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from mvgpt.runtime.manifest import CUSTOM_OP_ATTENTION, CUSTOM_OP_DOMAIN

MAX_POS = 4096  # rotary table rows: room for the long-cache tests
THETA = 10000.0


# ---------------------------------------------------------------- instruction sets
LANES = {"scalar": 1, "neon": 4, "avx2": 8, "avx512": 16}  # kernels/cpu.h's, narrowest first


def cpuinfo_isas(cpuinfo: str = "/proc/cpuinfo", machine: str | None = None) -> list[str] | None:
    """The kernels' instruction sets this CPU has by its /proc/cpuinfo flags (read apart from the
    library's own probe), narrowest first; None where there is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = set(re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.M).group(1).split())
    machine = machine or platform.machine()
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
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = 9
    return m


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
