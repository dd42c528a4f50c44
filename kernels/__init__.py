"""mvgpt.kernels: the ``mvgpt::SelectiveScan`` onnxruntime custom op.

Owns where the compiled library lives and how a session loads it. The C++ kernel is
``selective_scan.cc`` (built by ``python -m mvgpt.kernels.build`` into ``lib/libmvgpt_ops.so``);
``portable.py`` rewrites the op into standard ONNX ops for runtimes that cannot load it. No torch
here: the runtime imports this package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mvgpt.runtime.errors import KernelError
from mvgpt.runtime.manifest import CUSTOM_OP_DOMAIN, CUSTOM_OP_SCAN

DOMAIN = CUSTOM_OP_DOMAIN  # the op identity is defined once, in runtime/manifest.py
OP_TYPE = CUSTOM_OP_SCAN
LIB_NAME = "libmvgpt_ops.so"
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
            f"the SelectiveScan custom-op library is missing: expected {path}, got no file; "
            "fix: build it with `python -m mvgpt.kernels.build` (needs g++), or set "
            f"{LIB_ENV} to a built {LIB_NAME}"
        )
    return str(path)


# The op runs on its own thread pool; onnxruntime's intra-op workers, left spinning after each
# node, would compete with it for the cores. Measured on 2 cores, int8 0.5b video_mamba.onnx,
# interleaved: 1.45-1.52 s spinning, 1.20-1.25 s not (the decoder, without the op, is faster
# spinning: its sessions keep the default).
NO_SPINNING = ("session.intra_op.allow_spinning", "0")


def register(session_options: Any) -> Any:
    """Load the library into an ``onnxruntime.SessionOptions`` and turn off onnxruntime's
    intra-op spinning for that session (see NO_SPINNING); returns the same options."""
    try:
        session_options.register_custom_ops_library(library_path())
        session_options.add_session_config_entry(*NO_SPINNING)
    except KernelError:
        raise
    except Exception as e:  # onnxruntime raises its own Fail/RuntimeException types
        raise KernelError(
            f"onnxruntime could not load {library_path()}: {e}; fix: rebuild it with "
            "`python -m mvgpt.kernels.build --force`"
        ) from e
    return session_options


__all__ = ["DOMAIN", "OP_TYPE", "is_available", "library_path", "register"]
