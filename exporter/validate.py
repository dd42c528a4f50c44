"""Validation after export: every graph run in onnxruntime against its torch wrapper on fresh
random inputs (other sizes than the traced ones, so dynamic axes are exercised). All failures are
collected and raised as one ExportError (the optimum habit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvgpt.exporter import agreement
from mvgpt.exporter.wrappers import GraphSpec
from mvgpt.runtime import manifest as M
from mvgpt.runtime.errors import ExportError

# max |ort - torch| / max(1, max |torch|) allowed per precision: fp32 graphs differ from eager
# torch only by operation order; quantized graphs are judged by cosine instead (see quantize.py).
FP32_TOLERANCE = 1e-3


@dataclass
class StageCheck:
    stage: str
    file: str
    max_abs_diff: float
    max_rel_diff: float
    cosine: float
    ok: bool


def fresh_inputs(spec: GraphSpec, gen: torch.Generator) -> tuple:
    """Inputs of other sizes than the traced example, where the graph's axes are dynamic."""
    if spec.stage == M.DECODER:
        embeds, _, *past, _ = spec.example
        # GQA: rows unpadded, and batch 1 when several new positions follow a past
        batch, seq, past_len = 1, 3, 5
        past = [torch.randn(batch, p.shape[1], past_len, p.shape[3], generator=gen) for p in past]
        mask = torch.ones(batch, past_len + seq, dtype=torch.int64)
        embeds = torch.randn(batch, seq, embeds.shape[-1], generator=gen)
        return (embeds, mask, *past, torch.tensor(0))  # 0: logits of every position
    if spec.stage == M.EMBED_TOKENS:
        vocab = spec.module.embed_tokens.num_embeddings
        return (torch.randint(0, vocab, (2, 7), generator=gen),)
    out = []
    for example, tensor_spec in zip(spec.example, spec.inputs, strict=True):
        shape = list(example.shape)
        if isinstance(tensor_spec.shape[0], str):
            shape[0] = max(1, shape[0] - 1)  # e.g. 15 frames instead of 16
        out.append(torch.randn(*shape, generator=gen))
    return tuple(out)


def compare(ort_out: list[np.ndarray], torch_out: list[np.ndarray]) -> tuple[float, float, float]:
    """(max |diff|, max |diff| relative to max(1, max |torch|), cosine)."""
    abs_diff, cosine = agreement.compare(ort_out, torch_out)
    scale = max(1.0, max(float(np.max(np.abs(b))) for b in torch_out))
    return abs_diff, abs_diff / scale, cosine


@dataclass
class Reference:
    """What a stage's graph is checked against: fresh inputs and the torch module's outputs on
    them, with the graph's I/O names (kept without the module, so the torch weights can be freed
    before any onnxruntime session is made)."""

    stage: str
    feeds: dict[str, np.ndarray]
    output_names: list[str]
    expected: list[np.ndarray]


def reference(spec: GraphSpec, seed: int = 0) -> Reference:
    gen = torch.Generator().manual_seed(seed)
    inputs = fresh_inputs(spec, gen)
    with torch.no_grad():
        expected = spec.module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return Reference(
        spec.stage,
        {s.name: t.numpy() for s, t in zip(spec.inputs, inputs, strict=True)},
        [s.name for s in spec.outputs],
        [t.float().numpy() for t in expected],
    )


def check_graph(
    ref: Reference, path: Path, custom_op: str | None, tolerance: float = FP32_TOLERANCE
) -> StageCheck:
    """``path`` (a graph of ``ref``'s stage; ``custom_op``: the mvgpt op it uses, None for a
    portable graph) against the torch outputs in ``ref``."""
    ort_out = agreement.session(path, custom_op).run(ref.output_names, ref.feeds)
    abs_diff, rel_diff, cosine = compare(ort_out, ref.expected)
    return StageCheck(ref.stage, path.name, abs_diff, rel_diff, cosine, rel_diff <= tolerance)


def raise_on_failures(checks: list[StageCheck]) -> None:
    bad = [c for c in checks if not c.ok]
    if bad:
        detail = "; ".join(f"{c.file}: max rel diff {c.max_rel_diff:.2e}" for c in bad)
        raise ExportError(f"validation failed for {len(bad)} graph(s): {detail}")


def format_table(checks: list[StageCheck]) -> str:
    rows = [f"{'graph':<28} {'max |diff|':>11} {'rel':>10} {'cosine':>10}  ok"]
    for c in checks:
        rows.append(
            f"{c.file:<28} {c.max_abs_diff:>11.3e} {c.max_rel_diff:>10.2e} {c.cosine:>10.6f}  "
            f"{'yes' if c.ok else 'NO'}"
        )
    return "\n".join(rows)
