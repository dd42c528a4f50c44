"""The portable graphs: mvgpt's custom ops rewritten into ops every onnxruntime build has.

``mvgpt::GroupQueryAttention`` takes com.microsoft.GroupQueryAttention's inputs and attributes,
so its portable form is that op (the node's domain changes, nothing else).

``mvgpt::SelectiveScan`` becomes standard ONNX ops.

Owns the decomposition used where the custom-op library cannot be loaded (other execution
providers, other runtimes): elementwise pre/post-processing over the whole sequence plus one ONNX
``Scan`` loop over time (time-major, axis 0) whose body carries the state h (B, D, N):

    dt = softplus?(delta + delta_bias)                      (B, D, L)
    per step t:  h = exp(dt_t[..., None] * A) * h + (dt_t u_t)[..., None] * B_t[:, None, :]
                 y_t = h @ C_t[..., None]                    (B, D)
    y = y + D[:, None] * u;  y = y * z * sigmoid(z)

Public: ``make_portable(model)`` replaces every mvgpt node of the main graph, and
``scan_model(...)`` builds a one-node test model (custom op or portable). No torch here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mvgpt.runtime.errors import KernelError
from mvgpt.runtime.manifest import (
    CUSTOM_OP_ATTENTION,
    CUSTOM_OP_DOMAIN,
    CUSTOM_OP_SCAN,
    IR_VERSION,
    OPSET,
    ORT_CONTRIB_DOMAIN,
)

INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

Dim = int | str


def _static_dims(graph: onnx.GraphProto, name: str) -> list[Dim] | None:
    """Dims of a tensor from the initializers, graph inputs or value_info (str = symbolic)."""
    for init in graph.initializer:
        if init.name == name:
            return list(init.dims)
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return None


class _Builder:
    """Collects the nodes and constants of one replacement, all named under a unique prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def name(self, label: str) -> str:
        return f"{self.prefix}{label}"

    def const(self, label: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, self.name(label)))
        return self.name(label)

    def op(self, op_type: str, inputs: list[str], label: str, **attrs) -> str:
        out = self.name(label)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _scan_body(prefix: str, a_name: str, dims: tuple[Dim, Dim, Dim]) -> onnx.GraphProto:
    """One time step: (h, dt_t, dtu_t, b_t, c_t) -> (h, y_t); A comes from the outer scope."""
    batch, dim, state = dims
    p = f"{prefix}body/"
    axes_last = helper.make_tensor(f"{p}axes_last", TensorProto.INT64, [1], [-1])
    axes_one = helper.make_tensor(f"{p}axes_one", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Unsqueeze", [f"{p}dt", f"{p}axes_last"], [f"{p}dt3"]),  # (B, D, 1)
        helper.make_node("Mul", [f"{p}dt3", a_name], [f"{p}dt_a"]),  # (B, D, N)
        helper.make_node("Exp", [f"{p}dt_a"], [f"{p}decay"]),
        helper.make_node("Unsqueeze", [f"{p}dtu", f"{p}axes_last"], [f"{p}dtu3"]),  # (B, D, 1)
        helper.make_node("Unsqueeze", [f"{p}b", f"{p}axes_one"], [f"{p}b3"]),  # (B, 1, N)
        helper.make_node("Mul", [f"{p}dtu3", f"{p}b3"], [f"{p}dbu"]),  # (B, D, N)
        helper.make_node("Mul", [f"{p}decay", f"{p}h_in"], [f"{p}decayed"]),
        helper.make_node("Add", [f"{p}decayed", f"{p}dbu"], [f"{p}h_out"]),
        helper.make_node("Unsqueeze", [f"{p}c", f"{p}axes_last"], [f"{p}c3"]),  # (B, N, 1)
        helper.make_node("MatMul", [f"{p}h_out", f"{p}c3"], [f"{p}y3"]),  # (B, D, 1)
        helper.make_node("Squeeze", [f"{p}y3", f"{p}axes_last"], [f"{p}y"]),  # (B, D)
    ]
    f32 = TensorProto.FLOAT
    return helper.make_graph(
        nodes,
        f"{p}graph",
        inputs=[
            helper.make_tensor_value_info(f"{p}h_in", f32, [batch, dim, state]),
            helper.make_tensor_value_info(f"{p}dt", f32, [batch, dim]),
            helper.make_tensor_value_info(f"{p}dtu", f32, [batch, dim]),
            helper.make_tensor_value_info(f"{p}b", f32, [batch, state]),
            helper.make_tensor_value_info(f"{p}c", f32, [batch, state]),
        ],
        outputs=[
            helper.make_tensor_value_info(f"{p}h_out", f32, [batch, dim, state]),
            helper.make_tensor_value_info(f"{p}y", f32, [batch, dim]),
        ],
        initializer=[axes_last, axes_one],
    )


def _replace(
    node: onnx.NodeProto, graph: onnx.GraphProto, prefix: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Standard-op nodes (and constants) computing ``node``'s output from its inputs."""
    names = list(node.input) + [""] * (len(INPUTS) - len(node.input))
    u, delta, a_mat, b_mat, c_mat, d_vec, z, bias = names[: len(INPUTS)]
    if not all((u, delta, a_mat, b_mat, c_mat, d_vec)):
        raise KernelError(
            f"SelectiveScan node '{node.name}' lacks a required input: expected u, delta, A, B, "
            f"C, D, got {list(node.input)}; fix: export the node with all six inputs"
        )
    softplus = next((a.i for a in node.attribute if a.name == "delta_softplus"), 0)
    a_dims = _static_dims(graph, a_mat)
    if a_dims is None or len(a_dims) != 2:
        a_dims = ["dim", "state"]
    u_dims = _static_dims(graph, u) or ["batch", "dim", "length"]
    batch = u_dims[0] if isinstance(u_dims[0], int) and u_dims[0] > 0 else "batch"
    dim, state = (
        d if isinstance(d, int) and d > 0 else s
        for d, s in zip(a_dims, ("dim", "state"), strict=True)
    )

    g = _Builder(prefix)
    dt = delta
    if bias:
        bias2 = g.op("Unsqueeze", [bias, g.const("axes_last", np.array([-1], np.int64))], "bias2")
        dt = g.op("Add", [delta, bias2], "dt_biased")  # (B, D, L)
    if softplus:
        dt = g.op("Softplus", [dt], "dt")
    dtu = g.op("Mul", [dt, u], "dtu")  # (B, D, L)
    dt_t = g.op("Transpose", [dt], "dt_t", perm=[2, 0, 1])  # (L, B, D)
    dtu_t = g.op("Transpose", [dtu], "dtu_t", perm=[2, 0, 1])  # (L, B, D)
    b_t = g.op("Transpose", [b_mat], "b_t", perm=[2, 0, 1])  # (L, B, N)
    c_t = g.op("Transpose", [c_mat], "c_t", perm=[2, 0, 1])  # (L, B, N)
    first = g.const("first", np.array([0], np.int64))
    one = g.const("one", np.array([1], np.int64))
    batch_dim = g.op("Slice", [g.op("Shape", [u], "u_shape"), first, one], "batch_dim")  # (1,)
    h_shape = g.op("Concat", [batch_dim, g.op("Shape", [a_mat], "a_shape")], "h_shape", axis=0)
    h0 = g.op("ConstantOfShape", [h_shape], "h0")  # (B, D, N) zeros, float32
    body = _scan_body(prefix, a_mat, (batch, dim, state))
    scan_out = [g.name("h_last"), g.name("y_t")]
    g.nodes.append(
        helper.make_node(
            "Scan",
            [h0, dt_t, dtu_t, b_t, c_t],
            scan_out,
            name=g.name("scan"),
            num_scan_inputs=4,
            body=body,
        )  # fmt: skip
    )
    y = g.op("Transpose", [g.name("y_t")], "y_scan", perm=[1, 2, 0])  # (B, D, L)
    d_col = g.op("Unsqueeze", [d_vec, g.const("axes_d", np.array([-1], np.int64))], "d_col")
    y = g.op("Add", [y, g.op("Mul", [u, d_col], "skip")], "y_skip" if z else "out")
    if z:
        gate = g.op("Mul", [z, g.op("Sigmoid", [z], "z_sigmoid")], "gate")  # silu(z)
        y = g.op("Mul", [y, gate], "out")
    g.nodes.append(helper.make_node("Identity", [y], [node.output[0]], name=g.name("output")))
    return g.nodes, g.inits


def _is_scan(node: onnx.NodeProto) -> bool:
    return node.domain == CUSTOM_OP_DOMAIN and node.op_type == CUSTOM_OP_SCAN


def make_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every mvgpt::SelectiveScan node of the main graph replaced by
    standard ONNX ops and every mvgpt::GroupQueryAttention node moved to com.microsoft; the
    ``mvgpt`` opset import is dropped when no custom node remains. A model loaded without its
    external data keeps referring to the same data file."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    attention = [
        n
        for n in out.graph.node
        if n.domain == CUSTOM_OP_DOMAIN and n.op_type == CUSTOM_OP_ATTENTION
    ]
    for node in attention:
        node.domain = ORT_CONTRIB_DOMAIN
    if attention and not any(o.domain == ORT_CONTRIB_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(ORT_CONTRIB_DOMAIN, 1))
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    if any(_is_scan(n) for n in out.graph.node) and opset < 13:
        raise KernelError(
            f"make_portable needs the model's default opset >= 13 (Unsqueeze/Squeeze with axes "
            f"inputs), got {opset}; fix: export with opset {OPSET}"
        )
    taken = {n.name for n in out.graph.node} | {i.name for i in out.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(out.graph.node):
        if not _is_scan(node):
            new_nodes.append(node)
            continue
        prefix = f"{node.name or CUSTOM_OP_SCAN}_portable{index}/"
        while any(name.startswith(prefix) for name in taken):
            prefix = f"_{prefix}"
        nodes, inits = _replace(node, out.graph, prefix)
        new_nodes.extend(nodes)
        out.graph.initializer.extend(inits)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    still_used = any(n.domain == CUSTOM_OP_DOMAIN for n in out.graph.node) or any(
        n.domain == CUSTOM_OP_DOMAIN for f in out.functions for n in f.node
    )
    if not still_used:
        keep = [o for o in out.opset_import if o.domain != CUSTOM_OP_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep)
    return out


def random_inputs(
    batch: int,
    dim: int,
    length: int,
    state: int,
    with_z: bool,
    with_bias: bool,
    softplus: bool,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded float32 feeds for ``scan_model`` in VideoMamba-like ranges: A = -(1..N) * noise
    (S4D-real init), dt around 0.01..0.3 after softplus (or positive without it)."""
    rng = np.random.default_rng(seed)
    a_init = np.arange(1, state + 1, dtype=np.float64)[None, :] * np.exp(
        0.3 * rng.standard_normal((dim, state))
    )  # (D, N)
    feeds = {
        "u": rng.standard_normal((batch, dim, length)),
        "delta": rng.standard_normal((batch, dim, length)) - 2.5
        if softplus
        else rng.uniform(0.005, 0.3, (batch, dim, length)),
        "A": -a_init,
        "B": rng.standard_normal((batch, state, length)),
        "C": rng.standard_normal((batch, state, length)),
        "D": rng.standard_normal(dim),
    }
    if with_z:
        feeds["z"] = rng.standard_normal((batch, dim, length))
    if with_bias:
        bias = 0.5 * rng.standard_normal(dim) if softplus else rng.uniform(0.0, 0.05, dim)
        feeds["delta_bias"] = bias
    return {k: v.astype(np.float32) for k, v in feeds.items()}


def scan_model(
    batch: Dim,
    dim: Dim,
    length: Dim,
    state: Dim,
    with_z: bool,
    with_bias: bool,
    softplus: bool,
    portable: bool,
) -> onnx.ModelProto:
    """A one-node model y = SelectiveScan(u, delta, A, B, C, D[, z][, delta_bias]).

    Every operand is a graph input named as in ``INPUTS``; a dim given as a string becomes a
    symbolic dim. ``portable=True`` returns the standard-op version (``make_portable``).
    """
    f32 = TensorProto.FLOAT
    shapes = {
        "u": [batch, dim, length],
        "delta": [batch, dim, length],
        "A": [dim, state],
        "B": [batch, state, length],
        "C": [batch, state, length],
        "D": [dim],
        "z": [batch, dim, length],
        "delta_bias": [dim],
    }
    present = {"z": with_z, "delta_bias": with_bias}
    node_inputs = [name if present.get(name, True) else "" for name in INPUTS]
    while node_inputs[-1] == "":
        node_inputs.pop()
    node = helper.make_node(
        CUSTOM_OP_SCAN,
        node_inputs,
        ["y"],
        name="scan",
        domain=CUSTOM_OP_DOMAIN,
        delta_softplus=int(softplus),
    )
    graph = helper.make_graph(
        [node],
        "selective_scan",
        inputs=[helper.make_tensor_value_info(n, f32, shapes[n]) for n in node_inputs if n],
        outputs=[helper.make_tensor_value_info("y", f32, [batch, dim, length])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(CUSTOM_OP_DOMAIN, 1)],
        ir_version=IR_VERSION,
        producer_name="mvgpt",
    )
    return make_portable(model) if portable else model
