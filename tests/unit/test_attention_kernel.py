"""The mvgpt::GroupQueryAttention op in isolation: its one-position kernel (each instruction-set
path) against a float64 numpy attention written here, and against onnxruntime's own
com.microsoft.GroupQueryAttention; packed and separate q/k/v, batch rows at different lengths, a
cache written in place through IOBinding or copied into a new present, query groups wider than
one register block, several positions (handed to onnxruntime's kernel), and its errors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from mvgpt import kernels
from mvgpt.kernels.portable import make_portable
from mvgpt.runtime.manifest import CUSTOM_OP_ATTENTION, CUSTOM_OP_DOMAIN, ORT_CONTRIB_DOMAIN

pytestmark = pytest.mark.skipif(
    not kernels.is_available(),
    reason="custom-op library not built: run `python -m mvgpt.kernels.build`",
)

MAX_POS = 4096  # rotary table rows: room for the long-cache test
THETA = 10000.0


def model(nh: int, kvh: int, hd: int, packed: bool, rotary: bool = True, domain=CUSTOM_OP_DOMAIN):
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


def session(m, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    kernels.register(options, spinning=True)
    return ort.InferenceSession(m.SerializeToString(), options, ["CPUExecutionProvider"])


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


def isas() -> list[str]:
    import platform

    return ["scalar", "avx2", "avx512"] if platform.machine() in ("x86_64", "AMD64") else ["scalar"]


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize(
    "nh, kvh, hd, packed",
    [(14, 2, 64, True), (14, 2, 64, False), (4, 4, 16, True), (20, 2, 8, False), (6, 3, 12, True)],
)
def test_step_matches_naive_attention(monkeypatch, isa, nh, kvh, hd, packed):
    monkeypatch.setenv("MVGPT_ATTENTION_ISA", isa)
    rng = np.random.default_rng(0)
    f = feeds(rng, nh, kvh, hd, lengths=[37, 5], cache=48, packed=packed)
    out, present_k, present_v = session(model(nh, kvh, hd, packed)).run(None, f)
    want, new_k, new_v = naive_step(f, nh, kvh, hd, packed)
    diff = float(np.abs(out - want).max())
    print(f"{isa} nh={nh} kvh={kvh} hd={hd} packed={packed}: max |out - naive| {diff:.2e}")
    assert diff < 2e-5
    for b, pos in enumerate(f["sl"]):
        np.testing.assert_allclose(present_k[b, :, pos], new_k[b], atol=1e-5)
        np.testing.assert_array_equal(present_v[b, :, pos], new_v[b])
        np.testing.assert_array_equal(present_k[b, :, :pos], f["pk"][b, :, :pos])
        np.testing.assert_array_equal(present_v[b, :, :pos], f["pv"][b, :, :pos])


@pytest.mark.parametrize("seq", [1, 6])
def test_matches_onnxruntime_gqa(seq):
    """One position: own kernel vs onnxruntime's; several: onnxruntime's kernel, the same bits."""
    nh, kvh, hd = 14, 2, 64
    rng = np.random.default_rng(1)
    f = feeds(rng, nh, kvh, hd, lengths=[300], cache=320, packed=True, seq=seq)
    ours = session(model(nh, kvh, hd, True)).run(None, f)
    theirs = session(model(nh, kvh, hd, True, domain=ORT_CONTRIB_DOMAIN)).run(None, f)
    used = 300 + seq
    diff = float(np.abs(ours[0] - theirs[0]).max())
    print(f"seq={seq}: max |ours - onnxruntime's| {diff:.2e}")
    assert diff < (2e-6 if seq == 1 else 1e-7)
    for a, b in zip(ours[1:], theirs[1:], strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a[:, :, :used], b[:, :, :used], atol=1e-6)


def test_without_rotary():
    nh, kvh, hd = 8, 2, 32
    f = feeds(np.random.default_rng(2), nh, kvh, hd, [20], 24, packed=False, rotary=False)
    out = session(model(nh, kvh, hd, False, rotary=False)).run(None, f)[0]
    want = naive_step(f, nh, kvh, hd, False, rotary=False)[0]
    assert float(np.abs(out - want).max()) < 2e-5


def test_cache_bound_in_place_changes_only_the_new_row():
    """past and present bound to one buffer (the runtime's KV cache): the step writes row ``pos``
    of each kv head and nothing else, and answers like a run with separate buffers."""
    nh, kvh, hd, cap = 14, 2, 64, 256
    f = feeds(np.random.default_rng(3), nh, kvh, hd, [200], cap, packed=True)
    sess = session(model(nh, kvh, hd, True))
    separate = sess.run(None, f)
    keys, values = f["pk"].copy(), f["pv"].copy()
    kbuf, vbuf = ort.OrtValue.ortvalue_from_numpy(keys), ort.OrtValue.ortvalue_from_numpy(values)
    binding = sess.io_binding()
    for name in ("q", "sl", "tot", "cos", "sin"):
        binding.bind_cpu_input(name, f[name])
    binding.bind_ortvalue_input("pk", kbuf)
    binding.bind_ortvalue_input("pv", vbuf)
    binding.bind_output("o", "cpu")
    binding.bind_ortvalue_output("prk", kbuf)
    binding.bind_ortvalue_output("prv", vbuf)
    sess.run_with_iobinding(binding)
    out = binding.copy_outputs_to_cpu()[0]
    np.testing.assert_array_equal(out, separate[0])
    for buf, before, present in ((keys, f["pk"], separate[1]), (values, f["pv"], separate[2])):
        changed = np.argwhere((buf != before).any(-1)).tolist()
        assert changed == [[0, g, 200] for g in range(kvh)]
        np.testing.assert_array_equal(buf[:, :, 200], present[:, :, 200])


def test_threads_do_not_change_the_result():
    nh, kvh, hd = 14, 2, 64
    f = feeds(np.random.default_rng(4), nh, kvh, hd, [90, 3, 40], 96, packed=True)
    one = session(model(nh, kvh, hd, True), threads=1).run(None, f)
    two = session(model(nh, kvh, hd, True), threads=2).run(None, f)
    np.testing.assert_array_equal(one[0], two[0])
    for b, pos in enumerate(f["sl"]):  # rows past a row's length are not written
        for a1, a2 in zip(one[1:], two[1:], strict=True):
            np.testing.assert_array_equal(a1[b, :, : pos + 1], a2[b, :, : pos + 1])


def test_position_outside_the_cache_is_an_error():
    nh, kvh, hd = 4, 2, 16
    f = feeds(np.random.default_rng(5), nh, kvh, hd, [10], 8, packed=True)
    f["tot"] = np.array(11, np.int32)
    f["sl"] = np.array([30], np.int32)  # beyond total_sequence_length and the cache
    with pytest.raises(Exception, match="seqlens_k\\[0\\] = 30 is outside the cache"):
        session(model(nh, kvh, hd, True)).run(None, f)


def test_bad_head_attributes_fail_at_load():
    m = model(6, 4, 16, True)  # 6 query heads do not share 4 kv heads evenly
    with pytest.raises(Exception, match="num_heads a multiple of kv_num_heads"):
        session(m)


def test_portable_form_is_onnxruntime_gqa():
    m = make_portable(model(14, 2, 64, True))
    assert [(n.domain, n.op_type) for n in m.graph.node] == [
        (ORT_CONTRIB_DOMAIN, "GroupQueryAttention")
    ]
    assert {o.domain for o in m.opset_import} == {"", ORT_CONTRIB_DOMAIN}
    f = feeds(np.random.default_rng(6), 14, 2, 64, [50], 64, packed=True)
    plain = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = session(model(14, 2, 64, True)).run(None, f)[0]
    assert float(np.abs(plain.run(None, f)[0] - ours).max()) < 2e-6


def test_position_beyond_a_separate_past_is_an_error():
    """not in place, the rows before the new one come from past_key: it must hold them"""
    nh, kvh, hd = 4, 2, 16
    f = feeds(np.random.default_rng(7), nh, kvh, hd, [10], 8, packed=True)  # 8 past rows, pos 10
    with pytest.raises(Exception, match="needs that many past positions"):
        session(model(nh, kvh, hd, True)).run(None, f)


@pytest.mark.parametrize("isa", isas())
def test_long_cache_split_into_ranges_matches_naive(monkeypatch, isa):
    """a cache of 2101 positions runs as 4 ranges merged (attention.cc: kMinRangeKeys 512); the
    short row (3 positions) leaves a range empty"""
    monkeypatch.setenv("MVGPT_ATTENTION_ISA", isa)
    nh, kvh, hd = 14, 2, 64
    f = feeds(np.random.default_rng(8), nh, kvh, hd, lengths=[2100, 2], cache=2200, packed=True)
    out, present_k, _ = session(model(nh, kvh, hd, True)).run(None, f)
    want, new_k, _ = naive_step(f, nh, kvh, hd, True)
    diff = float(np.abs(out - want).max())
    print(f"{isa}: max |out - naive| {diff:.2e}")
    assert diff < 2e-5
    for b, pos in enumerate(f["sl"]):
        np.testing.assert_allclose(present_k[b, :, pos], new_k[b], atol=1e-5)
