"""SelectiveScan parity over a seeded grid of shapes: the C++ kernel in onnxruntime, the torch
reference (models/scan.py) and the portable ONNX Scan graph agree; the torch custom op exports to
one mvgpt::SelectiveScan node that runs in onnxruntime and matches.

Tolerance: all three run in float32 with the state in float32 but round differently (a
polynomial exp2 in the kernel, libm exp in torch and onnxruntime, other summation orders). Each
state is a decaying sum whose rounding stays a few ulp of its largest term, so we accept
|y - ref| <= RTOL * |ref| + ATOL * max(1, max|ref|): RTOL = 1e-4, ATOL = 2e-5 (about 170 float32
ulp of the output scale). Seen: below 1e-6 relative to the scale.
"""

from __future__ import annotations

import io
import itertools
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mvgpt.kernels import portable
from mvgpt.runtime.manifest import CUSTOM_OP_SCAN, OPSET
from mvgpt.runtime.sessions import library_available, session_options

torch = pytest.importorskip("torch")
from mvgpt.models.scan import selective_scan_ref  # noqa: E402 - needs torch

RTOL, ATOL = 1e-4, 2e-5
needs_lib = pytest.mark.skipif(
    not library_available(),
    reason="custom-op library not built: run `python -m mvgpt.kernels.build`",
)


def _grid(count: int, seed: int = 0) -> list[tuple]:
    """A seeded sample of (batch, dim, length, state, z, bias, softplus), kept small."""
    full = itertools.product(
        (1, 2), (8, 24, 37, 64, 160, 1152), (1, 2, 7, 64, 1569), (1, 4, 16), *([(True, False)] * 3)
    )
    small = [c for c in full if c[0] * c[1] * c[2] * c[3] <= 2_000_000]
    return random.Random(seed).sample(small, count)


CASES = _grid(14) + [(1, 1152, 1569, 16, True, True, True)]  # + the VideoMamba-M shape


def session(model: onnx.ModelProto, custom: bool) -> ort.InferenceSession:
    options = session_options(custom_op=CUSTOM_OP_SCAN if custom else None)
    return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])


def reference(feeds: dict[str, np.ndarray], softplus: bool) -> np.ndarray:
    args = [torch.from_numpy(feeds[k]) if k in feeds else None for k in portable.INPUTS]
    return selective_scan_ref(*args, delta_softplus=softplus).numpy()


def check(name: str, y: np.ndarray, ref: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(ref).max()))
    diff = np.abs(y.astype(np.float64) - ref)
    print(f"{name}: max |diff| {diff.max():.3e} (relative to scale {diff.max() / scale:.2e})")
    assert y.shape == ref.shape
    assert np.all(diff <= RTOL * np.abs(ref) + ATOL * scale), name


@needs_lib
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "b{}_d{}_l{}_n{}_z{:d}_bias{:d}_sp{:d}".format(*c)
)
def test_kernel_reference_portable_agree(case):
    batch, dim, length, state, with_z, with_bias, softplus = case
    feeds = portable.random_inputs(*case, seed=hash(case) % 1000)
    ref = reference(feeds, softplus)
    native = session(portable.scan_model(*case, portable=False), custom=True).run(None, feeds)[0]
    check(f"native {case}", native, ref)
    model = portable.scan_model(*case, portable=True)
    check(f"portable {case}", session(model, custom=False).run(None, feeds)[0], ref)


class _Mixer(torch.nn.Module):
    """The scan as a VideoMamba mixer calls it, with the custom op swapped in."""

    def __init__(self, dim: int, state: int, with_z: bool):
        super().__init__()
        from mvgpt.exporter.scan_op import ScanOp

        gen = torch.Generator().manual_seed(0)
        self.A_log = torch.nn.Parameter(torch.log(torch.arange(1.0, state + 1).repeat(dim, 1)))
        self.D = torch.nn.Parameter(torch.randn(dim, generator=gen))
        self.delta_bias = torch.nn.Parameter(0.5 * torch.randn(dim, generator=gen))
        self.scan = ScanOp(delta_softplus=True)
        self.with_z = with_z

    def forward(self, u, delta, B, C, z):
        A = -torch.exp(self.A_log.float())
        gate = z if self.with_z else None
        return self.scan(u, delta, A, B, C, self.D.float(), gate, self.delta_bias.float())


@needs_lib
@pytest.mark.parametrize("with_z", [True, False])
def test_torch_op_exports_to_one_node(with_z):
    from mvgpt.exporter.scan_op import register_onnx_symbolic

    register_onnx_symbolic(17)
    register_onnx_symbolic(17)  # idempotent
    dim, state = 24, 16
    mixer = _Mixer(dim, state, with_z).eval()
    feeds = portable.random_inputs(1, dim, 20, state, True, False, True, seed=5)
    names = ["u", "delta", "B", "C", "z"]
    args = tuple(torch.from_numpy(feeds[k]) for k in names)
    buffer = io.BytesIO()
    axes = {"u": {0: "batch", 2: "length"}, "delta": {0: "batch", 2: "length"}}
    axes |= {k: {0: "batch", 2: "length"} for k in ("B", "C", "z")}
    torch.onnx.export(
        mixer, args, buffer, dynamo=False, opset_version=OPSET, input_names=names,
        output_names=["y"], dynamic_axes=axes,
    )  # fmt: skip
    model = onnx.load_from_string(buffer.getvalue())
    scans = [n for n in model.graph.node if n.op_type == "SelectiveScan"]
    assert len(scans) == 1 and scans[0].domain == "mvgpt"
    assert len(scans[0].input) == 8 and (scans[0].input[6] == "") != with_z
    assert [(a.name, a.i) for a in scans[0].attribute] == [("delta_softplus", 1)]

    other = portable.random_inputs(2, dim, 33, state, True, False, True, seed=6)  # new B and L
    inputs = {i.name for i in model.graph.input}
    feeds2 = {k: v for k, v in other.items() if k in inputs}
    with torch.no_grad():
        ref = mixer(*(torch.from_numpy(other[k]) for k in names)).numpy()
    check(f"exported op (z={with_z})", session(model, True).run(None, feeds2)[0], ref)
    free = portable.make_portable(model)
    check(f"exported + make_portable (z={with_z})", session(free, False).run(None, feeds2)[0], ref)
