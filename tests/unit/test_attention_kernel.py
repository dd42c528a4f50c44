"""The mvgpt::GroupQueryAttention op in isolation: its one-position kernel (each instruction-set
path) against a float64 numpy attention written here, and against onnxruntime's own
com.microsoft.GroupQueryAttention; packed and separate q/k/v, batch rows at different lengths, a
cache written in place through IOBinding or copied into a new present, query groups wider than
one register block, several positions (handed to onnxruntime's kernel), and its errors. Each
case checks which path ran (the library's report); asking for an instruction set this CPU lacks is
an error, and such cases are skipped by numpy's CPUID probe."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mvgpt import kernels
from mvgpt.kernels.portable import make_portable
from mvgpt.runtime.manifest import CUSTOM_OP_ATTENTION, ORT_CONTRIB_DOMAIN
from mvgpt.runtime.sessions import library_available, session_options
from tests.kernel_cases import LANES, attention_isa, feeds, naive_step, probed_isas
from tests.kernel_cases import attention_model as model

pytestmark = pytest.mark.skipif(
    not library_available(),
    reason="custom-op library not built: run `python -m mvgpt.kernels.build`",
)
CPU = probed_isas() or (kernels.cpu_isas() if library_available() else ["scalar"])


def session(m, threads: int = 2) -> ort.InferenceSession:
    options = session_options(threads, custom_op=CUSTOM_OP_ATTENTION)
    return ort.InferenceSession(m.SerializeToString(), options, ["CPUExecutionProvider"])


def ask_for(monkeypatch, isa: str) -> None:
    """MVGPT_ATTENTION_ISA=isa, or a skip when this CPU lacks it (asking would be an error)."""
    if isa not in CPU:
        pytest.skip(f"this CPU lacks {isa}: its probe shows {', '.join(CPU)}")
    monkeypatch.setenv("MVGPT_ATTENTION_ISA", isa)


@pytest.mark.parametrize("isa", list(LANES))
@pytest.mark.parametrize(
    "nh, kvh, hd, packed",
    [(14, 2, 64, True), (14, 2, 64, False), (4, 4, 16, True), (20, 2, 8, False), (6, 3, 12, True)],
)
def test_step_matches_naive_attention(monkeypatch, isa, nh, kvh, hd, packed):
    ask_for(monkeypatch, isa)
    rng = np.random.default_rng(0)
    f = feeds(rng, nh, kvh, hd, lengths=[37, 5], cache=48, packed=packed)
    out, present_k, present_v = session(model(nh, kvh, hd, packed)).run(None, f)
    ran = kernels.last_isa("GroupQueryAttention")
    want, new_k, new_v = naive_step(f, nh, kvh, hd, packed)
    diff = float(np.abs(out - want).max())
    print(f"{isa} (ran {ran}) {nh}/{kvh}/{hd} packed={packed}: max |out - naive| {diff:.2e}")
    assert ran == attention_isa(CPU, hd, cap=isa)  # the widest up to isa whose width divides hd
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
    assert kernels.last_isa("GroupQueryAttention") == (
        attention_isa(CPU, hd) if seq == 1 else "onnxruntime"
    )
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


@pytest.mark.parametrize(
    "name, value, kind", [("scale", 1, "a float"), ("num_heads", 14.0, "an int")]
)
def test_attribute_of_the_wrong_type_fails_at_load(name, value, kind):
    """read as its type or rejected: never silently the default"""
    m = model(14, 2, 64, True)
    attributes = m.graph.node[0].attribute
    attributes.remove(next(a for a in attributes if a.name == name))
    attributes.append(onnx.helper.make_attribute(name, value))
    with pytest.raises(Exception, match=f"GroupQueryAttention: attribute {name}: expected {kind}"):
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


@pytest.mark.parametrize("isa", list(LANES))
def test_long_cache_split_into_ranges_matches_naive(monkeypatch, isa):
    """a cache of 2101 positions runs as 4 ranges merged (attention_kernel.h: kMinRangeKeys 512);
    the short row (3 positions) leaves a range empty"""
    ask_for(monkeypatch, isa)
    nh, kvh, hd = 14, 2, 64
    f = feeds(np.random.default_rng(8), nh, kvh, hd, lengths=[2100, 2], cache=2200, packed=True)
    out, present_k, _ = session(model(nh, kvh, hd, True)).run(None, f)
    assert kernels.last_isa("GroupQueryAttention") == isa  # 64 is a multiple of every width
    want, new_k, _ = naive_step(f, nh, kvh, hd, True)
    diff = float(np.abs(out - want).max())
    print(f"{isa}: max |out - naive| {diff:.2e}")
    assert diff < 2e-5
    for b, pos in enumerate(f["sl"]):
        np.testing.assert_allclose(present_k[b, :, pos], new_k[b], atol=1e-5)


@pytest.mark.parametrize("threads", [1, 3, 4])
def test_long_cache_ranges_at_several_thread_counts(threads):
    """7 ranges (a 4000-position row; attention_kernel.h: kMinRangeKeys 512) and a row short
    enough to leave most of them empty, spread over 1, 3 and 4 of onnxruntime's threads: each
    count matches float64, and gives the same bits as 2 threads"""
    nh, kvh, hd = 14, 2, 64
    f = feeds(
        np.random.default_rng(9), nh, kvh, hd, lengths=[4000, 700, 2], cache=4001, packed=True
    )
    got = session(model(nh, kvh, hd, True), threads=threads).run(None, f)
    two = session(model(nh, kvh, hd, True), threads=2).run(None, f)
    want = naive_step(f, nh, kvh, hd, True)[0]
    diff = float(np.abs(got[0] - want).max())
    print(f"{threads} threads: max |out - naive| {diff:.2e}")
    assert diff < 2e-5
    np.testing.assert_array_equal(got[0], two[0])


@pytest.mark.parametrize("isa", ["sse9", *(i for i in LANES if i not in CPU)])
def test_isa_this_cpu_lacks_is_an_error(monkeypatch, isa):
    """never a silent fallback: an unknown name, or one this CPU lacks, fails the session"""
    monkeypatch.setenv("MVGPT_ATTENTION_ISA", isa)
    what = "this CPU lacks" if isa in LANES else "is not an instruction set"
    expected = re.escape(f"expected one of this CPU's ({', '.join(CPU)})")
    with pytest.raises(
        Exception, match=f"Attention: MVGPT_ATTENTION_ISA='?{isa}'? .*{what}.*{expected}"
    ):
        session(model(14, 2, 64, True))


def test_library_reports_the_cpus_instruction_sets():
    assert kernels.cpu_isas() == CPU
