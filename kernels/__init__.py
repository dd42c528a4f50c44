"""mvgpt.kernels: the onnxruntime custom ops ``mvgpt::SelectiveScan`` and
``mvgpt::GroupQueryAttention``.

Owns the ops' C++ sources (``selective_scan.cc`` and ``attention.cc`` with the headers they
include; ``library.cc`` registers both), their build (``python -m mvgpt.kernels.build`` writes
``lib/libmvgpt_ops.so``, ``.dylib`` on macOS), the portable forms of the ops
(``portable.py``: ops every onnxruntime has, for runtimes that cannot load the library), and
reading back which instruction set the ops ran. Loading the library into a session is the
runtime's (``mvgpt.runtime.sessions``): this package builds on the runtime, never the reverse.
No torch here.
"""

from __future__ import annotations

import ctypes

from mvgpt.runtime.errors import KernelError
from mvgpt.runtime.sessions import library_path


def _lib() -> ctypes.CDLL:
    """The library as onnxruntime loads it: one copy per process, so its report is shared."""
    lib = ctypes.CDLL(library_path())
    lib.mvgpt_ops_isa.restype = ctypes.c_char_p
    lib.mvgpt_ops_isa.argtypes = [ctypes.c_char_p]
    lib.mvgpt_ops_cpu_isas.restype = ctypes.c_char_p
    return lib


def last_isa(op: str) -> str:
    """The path the last run of ``op`` (``SelectiveScan`` or ``GroupQueryAttention``) in this
    process took: ``scalar``, ``neon``, ``avx2``, ``avx512``, or ``onnxruntime`` (an attention call
    handed to onnxruntime's kernel); ``""`` before the op's first run."""
    got = _lib().mvgpt_ops_isa(op.encode())
    if got is None:
        raise KernelError(
            f"unknown op {op!r}: expected SelectiveScan or GroupQueryAttention, got {op!r}; "
            "fix: pass one of those names"
        )
    return got.decode()


def cpu_isas() -> list[str]:
    """The instruction sets the library's kernels can use on this CPU, narrowest first."""
    return _lib().mvgpt_ops_cpu_isas().decode().split()


__all__ = ["cpu_isas", "last_isa"]
