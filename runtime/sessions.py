"""onnxruntime session options, built in one place: the runtime's, used as well by the exporter's
checks, the benchmarks and the tests, so that every graph runs the way ``mvgpt-run`` runs it.

Owns what every session gets (errors-only logging, the thread counts, one process-wide CPU
arena) and the mvgpt custom-op library: where it is, loading it into a session, and the thread
spinning its ops want. The library is built by ``python -m mvgpt.kernels.build`` into the
kernels package's ``lib/`` folder; the runtime finds it there without importing that package
(the runtime is the bottom layer: it imports no other mvgpt package).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import onnxruntime as ort

from . import manifest as M
from .errors import KernelError, MvgptError

LIB_NAME = "libmvgpt_ops.dylib" if sys.platform == "darwin" else "libmvgpt_ops.so"
LIB_ENV = "MVGPT_OPS_LIBRARY"  # optional override: an already-built library elsewhere

# One CPU memory arena for every session of the process instead of one per session: the stages
# run one after another, so each reuses what the previous one freed, and a second answer does not
# grow the arenas again (peak RSS: README results).
SHARED_ARENA = ("session.use_env_allocators", "1")
_shared_arena_registered = False


def built_library_path() -> Path:
    """Where ``python -m mvgpt.kernels.build`` writes the library: ``lib/`` of the mvgpt.kernels
    package (found by its import spec; the package's code is not run)."""
    spec = importlib.util.find_spec("mvgpt.kernels")
    if spec is None or not spec.submodule_search_locations:
        raise KernelError(
            "the mvgpt.kernels package is not installed: expected it beside mvgpt.runtime, got "
            "none; fix: reinstall mvgpt (pip install .)"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "lib" / LIB_NAME


def _library_file() -> Path:
    env = os.environ.get(LIB_ENV)
    return Path(env) if env else built_library_path()


def library_available() -> bool:
    """True when the custom-op library has been built (or ``$MVGPT_OPS_LIBRARY`` points at one)."""
    return _library_file().is_file()


def library_path() -> str:
    """Absolute path of the built custom-op library; raises KernelError when it is not built."""
    path = _library_file()
    if not path.is_file():
        raise KernelError(
            f"the mvgpt custom-op library is missing: expected {path}, got no file; "
            "fix: build it with `python -m mvgpt.kernels.build` (needs g++), or set "
            f"{LIB_ENV} to a built {LIB_NAME}"
        )
    return str(path)


def library_providers(op: str) -> tuple[str, ...]:
    """The execution providers the built library has a kernel of ``op`` for (its
    ``mvgpt_ops_providers``): the CPU's, and CUDA's for SelectiveScan in a build with CUDA; ()
    when the library is missing, cannot be loaded or predates the query."""
    import ctypes

    try:
        lib = ctypes.CDLL(library_path())
        query = lib.mvgpt_ops_providers
    except (KernelError, OSError, AttributeError):
        return ()
    query.restype = ctypes.c_char_p
    query.argtypes = [ctypes.c_char_p]
    found = query(op.encode())
    return tuple(found.decode().split()) if found else ()


def _register_shared_arena() -> None:
    """Register onnxruntime's process-wide CPU arena (default settings) once per process."""
    global _shared_arena_registered
    if not _shared_arena_registered:
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _shared_arena_registered = True


def _load_library(options: ort.SessionOptions, custom_op: str) -> None:
    ops = tuple(M.CUSTOM_OP_STAGES.values())
    if custom_op not in ops:
        raise MvgptError(
            f"custom op {custom_op!r}: expected one of {', '.join(ops)}, got {custom_op!r}; "
            "fix: name an op of the mvgpt library"
        )
    path = library_path()
    try:
        options.register_custom_ops_library(path)
    except Exception as e:  # onnxruntime raises its own Fail/RuntimeException types
        raise KernelError(
            f"onnxruntime could not load {path}: {e}; fix: rebuild it with "
            "`python -m mvgpt.kernels.build --force`"
        ) from e


def session_options(
    threads: int | None = None,
    custom_op: str | None = None,
    config: dict[str, str] | None = None,
) -> ort.SessionOptions:
    """The options of every mvgpt session: errors only in the log; ``threads`` intra-op threads
    and one inter-op thread when given (else onnxruntime's defaults); allocations from the one
    process-wide CPU arena; for a graph with ``custom_op`` (an op of
    ``manifest.CUSTOM_OP_STAGES``) the mvgpt library loaded; and the session config entries
    ``config`` (a package's stage entry: manifest S_SESSION_CONFIG), by default the ones the
    exporter gives a graph with ``custom_op`` (manifest.CUSTOM_OP_SESSION_CONFIG). Raises
    KernelError when the library is missing or does not load."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; ORT's warnings are not the user's business
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    _register_shared_arena()
    options.add_session_config_entry(*SHARED_ARENA)
    if custom_op is not None:
        _load_library(options, custom_op)
    if config is None:
        config = M.CUSTOM_OP_SESSION_CONFIG.get(custom_op, {}) if custom_op else {}
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return options
