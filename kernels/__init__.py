"""mvgpt.kernels: the onnxruntime custom ops ``mvgpt::SelectiveScan`` and
``mvgpt::GroupQueryAttention``.

Owns where the compiled library lives, how a session loads it, and reading back which
instruction set its ops ran. The C++ kernels are ``selective_scan.cc`` and ``attention.cc``
(built by ``python -m mvgpt.kernels.build`` into ``lib/libmvgpt_ops.so``, ``.dylib`` on macOS);
``portable.py`` rewrites the ops into ops every onnxruntime has, for runtimes that cannot load the
library. No torch here: the runtime imports this package.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Any

from mvgpt.runtime.errors import KernelError
from mvgpt.runtime.manifest import CUSTOM_OP_DOMAIN, CUSTOM_OP_SCAN

DOMAIN = CUSTOM_OP_DOMAIN  # the op identities are defined once, in runtime/manifest.py
OP_TYPE = CUSTOM_OP_SCAN
LIB_NAME = "libmvgpt_ops.dylib" if sys.platform == "darwin" else "libmvgpt_ops.so"
LIB_ENV = "MVGPT_OPS_LIBRARY"  # optional override: an already-built library elsewhere


def _candidate() -> Path:
    env = os.environ.get(LIB_ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "lib" / LIB_NAME


def is_available() -> bool:
    """True when the custom-op library has been built (or ``$MVGPT_OPS_LIBRARY`` points at one)."""
    return _candidate().is_file()


def library_path() -> str:
    """Absolute path of the built custom-op library; raises KernelError when it is not built."""
    path = _candidate()
    if not path.is_file():
        raise KernelError(
            f"the mvgpt custom-op library is missing: expected {path}, got no file; "
            "fix: build it with `python -m mvgpt.kernels.build` (needs g++), or set "
            f"{LIB_ENV} to a built {LIB_NAME}"
        )
    return str(path)


# SelectiveScan runs on its own thread pool; onnxruntime's intra-op workers, left spinning after
# each node, would compete with it for the cores. Measured on 2 cores, int8 0.5b
# video_mamba.onnx, interleaved: 1.45-1.52 s spinning, 1.20-1.25 s not. GroupQueryAttention runs
# on onnxruntime's own pool, and the decoder is faster spinning (31-33 vs 34-38 ms per int8 step):
# its sessions keep the default (spinning=True).
NO_SPINNING = ("session.intra_op.allow_spinning", "0")


def register(session_options: Any, spinning: bool = False) -> Any:
    """Load the library into an ``onnxruntime.SessionOptions``; unless ``spinning``, also turn off
    onnxruntime's intra-op spinning for that session (see NO_SPINNING). Returns the options."""
    try:
        session_options.register_custom_ops_library(library_path())
        if not spinning:
            session_options.add_session_config_entry(*NO_SPINNING)
    except KernelError:
        raise
    except Exception as e:  # onnxruntime raises its own Fail/RuntimeException types
        raise KernelError(
            f"onnxruntime could not load {library_path()}: {e}; fix: rebuild it with "
            "`python -m mvgpt.kernels.build --force`"
        ) from e
    return session_options


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


__all__ = ["DOMAIN", "OP_TYPE", "cpu_isas", "is_available", "last_isa", "library_path", "register"]
