"""The SelectiveScan op in isolation: reference vs a naive loop, each instruction-set path of the
C++ kernel (checked by the library's report of the path that ran; one this CPU lacks is skipped by
numpy's CPUID probe, and asking for it is an error), threads, absent optional inputs, shape errors,
the portable graph's plumbing, and the build helpers that need no network."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mvgpt import kernels
from mvgpt.kernels import build, portable
from mvgpt.runtime import sessions
from mvgpt.runtime.errors import KernelError
from mvgpt.runtime.manifest import CUSTOM_OP_DOMAIN, CUSTOM_OP_SCAN
from tests.kernel_cases import LANES, probed_isas, scan_reference
from tests.kernel_cases import scan_max_rel as max_rel

needs_lib = pytest.mark.skipif(
    not sessions.library_available(),
    reason="custom-op library not built: run `python -m mvgpt.kernels.build`",
)
CPU = probed_isas() or (kernels.cpu_isas() if sessions.library_available() else ["scalar"])


def naive_scan(feeds: dict[str, np.ndarray], softplus: bool) -> np.ndarray:
    """The recurrence one channel, one state and one step at a time, in float64."""
    u, delta, A, B, C, D = (feeds[k].astype(np.float64) for k in ("u", "delta", "A", "B", "C", "D"))
    z, bias = feeds.get("z"), feeds.get("delta_bias")
    batch, dim, length = u.shape
    y = np.zeros_like(u)
    for b in range(batch):
        for d in range(dim):
            h = np.zeros(A.shape[1])
            for t in range(length):
                dt = delta[b, d, t] + (0.0 if bias is None else float(bias[d]))
                if softplus:
                    dt = np.log1p(np.exp(dt))
                for n in range(A.shape[1]):
                    h[n] = np.exp(dt * A[d, n]) * h[n] + dt * B[b, n, t] * u[b, d, t]
                y[b, d, t] = (h * C[b, :, t]).sum() + D[d] * u[b, d, t]
                if z is not None:
                    zt = float(z[b, d, t])
                    y[b, d, t] *= zt / (1.0 + np.exp(-zt))
    return y


def test_vectorized_reference_matches_naive_loop():
    """tests/kernel_cases.scan_reference (all channels per step, for large cases) is the loop"""
    feeds = portable.random_inputs(2, 6, 13, 5, True, True, True, seed=5)
    err = max_rel(scan_reference(feeds, True), naive_scan(feeds, True))
    print(f"vectorized vs naive loop: max rel diff {err:.2e}")
    assert err < 1e-12


def run(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    op = CUSTOM_OP_SCAN if sessions.library_available() else None
    options = sessions.session_options(1, custom_op=op)
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("softplus", [True, False])
def test_reference_matches_naive_loop(softplus):
    torch = pytest.importorskip("torch")
    from mvgpt.models.scan import selective_scan_ref

    feeds = portable.random_inputs(2, 5, 9, 3, True, True, softplus, seed=1)
    args = [torch.from_numpy(feeds[k]) for k in portable.INPUTS]
    ref = selective_scan_ref(*args, delta_softplus=softplus).numpy()
    err = max_rel(ref, naive_scan(feeds, softplus))
    print(f"reference vs naive loop (softplus={softplus}): max rel diff {err:.2e}")
    assert err < 1e-5


@needs_lib
@pytest.mark.parametrize("isa", list(LANES))
@pytest.mark.parametrize(
    "shape,with_z,with_bias,softplus",
    [((1, 16, 40, 16), True, True, True), ((2, 37, 19, 16), False, True, False),
     ((1, 21, 70, 5), True, False, True), ((2, 8, 1, 1), False, False, False)],
)  # fmt: skip
def test_kernel_paths_match_naive(monkeypatch, isa, shape, with_z, with_bias, softplus):
    if isa not in CPU:  # asking would be an error (test_isa_this_cpu_lacks_is_an_error)
        pytest.skip(f"this CPU lacks {isa}: its probe shows {', '.join(CPU)}")
    monkeypatch.setenv("MVGPT_SCAN_ISA", isa)  # read when the session creates the kernel
    feeds = portable.random_inputs(*shape, with_z, with_bias, softplus, seed=2)
    y = run(portable.scan_model(*shape, with_z, with_bias, softplus, portable=False), feeds)
    err = max_rel(y, naive_scan(feeds, softplus))
    print(f"{isa} {shape} z={with_z} bias={with_bias} softplus={softplus}: max rel {err:.2e}")
    assert kernels.last_isa("SelectiveScan") == isa
    assert y.shape == shape[:2] + shape[2:3]
    assert err < 2e-5  # fp32 kernel vs a float64 loop: ~1e-6 seen


@needs_lib
@pytest.mark.parametrize("isa", list(LANES))
@pytest.mark.parametrize("state", [8, 16])
@pytest.mark.parametrize("regime", ["in_range", "clamped", "positive_a", "negative_dt"])
def test_decay_regimes_match_naive(monkeypatch, isa, state, regime):
    """each decay exp(dt A) a path may specialize (AVX2's state lanes: dt |A| log2 e <= 126 needs
    no clamp, beyond it the low clamp, some A > 0 or dt < 0 the general exp2), at N = 8 and 16,
    over 11 channels (a partial block) and 300 steps (two chunks and a partial one)"""
    if isa not in CPU:
        pytest.skip(f"this CPU lacks {isa}: its probe shows {', '.join(CPU)}")
    monkeypatch.setenv("MVGPT_SCAN_ISA", isa)
    softplus = regime != "negative_dt"
    shape = (1, 11, 300, state)
    feeds = portable.random_inputs(*shape, True, True, softplus, seed=7)
    if regime == "clamped":  # dt ~ 200 for 10 steps of channel 1: dt A log2 e down to ~ -1e4
        feeds["delta"][0, 1, 50:60] += 200.0
    elif regime == "positive_a":  # one growing state in channel 0
        feeds["A"][0, 3] = 0.05
    elif regime == "negative_dt":  # one step of channel 0 with dt < 0 (no softplus)
        feeds["delta"][0, 0, 10] = -0.1
    y = run(portable.scan_model(*shape, True, True, softplus, portable=False), feeds)
    err = max_rel(y, scan_reference(feeds, softplus))
    print(f"{isa} N={state} {regime}: max rel {err:.2e}")
    assert kernels.last_isa("SelectiveScan") == isa
    assert err < 2e-5


@needs_lib
@pytest.mark.parametrize("isa", ["sse9", *(i for i in LANES if i not in CPU)])
def test_isa_this_cpu_lacks_is_an_error(monkeypatch, isa):
    """never a silent fallback: an unknown name, or one this CPU lacks, fails the session"""
    monkeypatch.setenv("MVGPT_SCAN_ISA", isa)
    what = "this CPU lacks" if isa in LANES else "is not an instruction set"
    expected = re.escape(f"expected one of this CPU's ({', '.join(CPU)})")
    model = portable.scan_model(1, 8, 10, 4, False, False, False, portable=False)
    with pytest.raises(
        Exception, match=f"SelectiveScan: MVGPT_SCAN_ISA='?{isa}'? .*{what}.*{expected}"
    ):
        run(model, portable.random_inputs(1, 8, 10, 4, False, False, False))


@needs_lib
def test_default_is_the_widest_and_reported(monkeypatch):
    monkeypatch.delenv("MVGPT_SCAN_ISA", raising=False)
    feeds = portable.random_inputs(1, 9, 12, 4, False, False, False)
    run(portable.scan_model(1, 9, 12, 4, False, False, False, portable=False), feeds)
    assert kernels.last_isa("SelectiveScan") == CPU[-1]
    assert kernels.cpu_isas() == CPU  # the library's probe agrees with numpy's


@needs_lib
def test_threads_do_not_change_the_result(monkeypatch):
    shape = (2, 40, 130, 16)
    feeds = portable.random_inputs(*shape, True, True, True, seed=3)
    model = portable.scan_model(*shape, True, True, True, portable=False)
    outs = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("MVGPT_SCAN_THREADS", threads)
        outs.append(run(model, feeds))
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


@needs_lib
def test_bias_without_gate_is_an_empty_input():
    model = portable.scan_model(1, 9, 12, 4, False, True, True, portable=False)
    assert list(model.graph.node[0].input)[6:] == ["", "delta_bias"]
    feeds = portable.random_inputs(1, 9, 12, 4, False, True, True, seed=4)
    err = max_rel(run(model, feeds), naive_scan(feeds, True))
    print(f"z absent, delta_bias present: max rel {err:.2e}")
    assert err < 2e-5


@needs_lib
@pytest.mark.parametrize(
    "name,shape",
    [("delta", (1, 8, 11)), ("A", (9, 4)), ("B", (1, 4, 9)), ("C", (2, 4, 10)), ("D", (9,)),
     ("z", (1, 8, 9)), ("delta_bias", (7,))],
)  # fmt: skip
def test_wrong_shape_is_an_onnxruntime_error(name, shape):
    # symbolic dims so that onnxruntime lets the bad shape reach the kernel
    model = portable.scan_model("b", "d", "l", 4, True, True, True, portable=False)
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            dim.dim_param = dim.dim_param or f"{value.name}_{dim.dim_value}"
    feeds = portable.random_inputs(1, 8, 10, 4, True, True, True)
    feeds[name] = np.zeros(shape, np.float32)
    with pytest.raises(Exception, match=f"input '{name}' must have shape"):
        run(model, feeds)


@needs_lib
def test_rank_error_and_bad_attribute():
    model = portable.scan_model("b", "d", "l", 4, False, False, False, portable=False)
    feeds = portable.random_inputs(1, 8, 10, 4, False, False, False)
    feeds["u"] = feeds["u"][0]  # 2-D
    model.graph.input[0].type.tensor_type.shape.dim.pop()
    with pytest.raises(Exception, match="'u' must be 3-D"):
        run(model, feeds)
    model = portable.scan_model(1, 8, 10, 4, False, False, False, portable=False)
    model.graph.node[0].attribute[0].i = 2
    with pytest.raises(Exception, match="delta_softplus must be 0 or 1"):
        run(model, portable.random_inputs(1, 8, 10, 4, False, False, False))
    del model.graph.node[0].attribute[:]  # a float 1.0 is not the int 1, nor the default 0
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("delta_softplus", 1.0))
    with pytest.raises(Exception, match="SelectiveScan: attribute delta_softplus: expected an int"):
        run(model, portable.random_inputs(1, 8, 10, 4, False, False, False))


def test_portable_graph_has_no_custom_op_and_takes_symbolic_dims():
    model = portable.scan_model("batch", 12, "length", 6, True, False, True, portable=True)
    assert all(n.domain != CUSTOM_OP_DOMAIN for n in model.graph.node)
    assert all(o.domain != CUSTOM_OP_DOMAIN for o in model.opset_import)
    assert any(n.op_type == "Scan" for n in model.graph.node)
    for batch, length in ((1, 5), (3, 17)):
        feeds = portable.random_inputs(batch, 12, length, 6, True, False, True, seed=length)
        session = ort.InferenceSession(model.SerializeToString(), None, ["CPUExecutionProvider"])
        err = max_rel(session.run(None, feeds)[0], naive_scan(feeds, True))
        print(f"portable ({batch}, 12, {length}, 6): max rel {err:.2e}")
        assert err < 2e-5


def test_library_path_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv(sessions.LIB_ENV, str(tmp_path / "missing.so"))
    assert not sessions.library_available()
    with pytest.raises(KernelError, match="python -m mvgpt.kernels.build"):
        sessions.library_path()


def test_debian_mirror_is_read_from_apt_sources(tmp_path):
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert build.debian_mirror(str(parts), str(tmp_path / "none")) == "http://mirror.invalid/debian"
    (parts / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://m.invalid/debian/ bookworm main\n"
    )
    assert (
        build.debian_mirror(str(parts), str(tmp_path / "sources.list")) == "http://m.invalid/debian"
    )
    (tmp_path / "sources.list").write_text("# nothing\n")
    with pytest.raises(KernelError, match="no Debian mirror"):
        build.debian_mirror(str(parts), str(tmp_path / "sources.list"))


def test_kernels_package_does_not_import_torch():
    code = (
        "import sys, mvgpt.kernels, mvgpt.kernels.portable, mvgpt.kernels.build; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
