"""Test helper: open every graph of a package folder (custom-op and portable graphs) and check
its input/output names against the manifest."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from mvgpt.runtime import manifest as M
from mvgpt.runtime.sessions import session_options


def assert_graphs_match_manifest(out: Path, manifest: dict) -> list[Path]:
    """Every stage file exists, loads in onnxruntime and has the manifest's I/O names; returns
    the graph paths checked."""
    checked = []
    for stage, entry in manifest[M.K_STAGES].items():
        for name in (entry[M.S_FILE], entry.get(M.S_PORTABLE_FILE)):
            if name is None:
                continue
            assert (out / name).is_file(), f"{stage}: {name} missing"
            op = M.CUSTOM_OP_STAGES.get(stage) if name == entry[M.S_FILE] else None
            sess = ort.InferenceSession(
                str(out / name), session_options(custom_op=op), providers=["CPUExecutionProvider"]
            )
            assert [i.name for i in sess.get_inputs()] == [t[M.S_NAME] for t in entry[M.S_INPUTS]]
            assert [o.name for o in sess.get_outputs()] == [t[M.S_NAME] for t in entry[M.S_OUTPUTS]]
            checked.append(out / name)
    return checked
