"""Build the mvgpt custom-op library: ``python -m mvgpt.kernels.build``.

``pip install .`` (and ``-e .``, ``pip wheel .``) builds it already, through setup.py; this
command rebuilds it in place, e.g. after editing a kernel. The build itself (CMake, onnxruntime's
headers) is ``native_build``; see its docstring. The library goes to ``kernels/lib/``, where the
runtime looks (``runtime.sessions.built_library_path``). ``--werror`` turns warnings into errors;
``--output`` writes the library elsewhere. The build is skipped when the library is newer than
every source file (``--force`` rebuilds). ``--cuda`` adds SelectiveScan's CUDA kernel (nvcc; the
default is ``$MVGPT_CUDA``, see ``native_build.cuda_wanted``). ``--native`` builds the native C/C++
runtime instead (runtime/native: libmvgpt into its lib/, mvgpt-cli into its bin/), which the
set-up command runs after the install.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mvgpt.kernels.native_build import (  # noqa: F401  (re-exported for the tests and tools)
    CUDA_ON,
    KERNEL_DIR,
    NATIVE_LIB_PATH,
    SOURCES,
    build_library,
    build_native_runtime,
    compile_command,
    debian_mirror,
    find_headers,
    is_up_to_date,
    native_is_up_to_date,
)
from mvgpt.runtime.errors import KernelError
from mvgpt.runtime.sessions import built_library_path

LIB_PATH = built_library_path()  # where the runtime looks for it


def build(
    force: bool = False,
    verbose: bool = False,
    werror: bool = False,
    output: Path | None = None,
    cuda: bool | None = None,
) -> Path:
    """Build the custom-op library if needed (always when ``output`` is given or ``cuda`` is
    asked for); returns its path."""
    lib = Path(output) if output is not None else LIB_PATH
    cuda = cuda or os.environ.get("MVGPT_CUDA", "").lower() in CUDA_ON or None
    if output is None and not force and not werror and not cuda and is_up_to_date(lib):
        return lib
    return build_library(lib, werror=werror, verbose=verbose, cuda=cuda)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--verbose", action="store_true", help="echo the CMake commands")
    parser.add_argument("--werror", action="store_true", help="warnings are errors (rebuilds)")
    parser.add_argument(
        "--output", type=Path, help=f"write the library here instead of {LIB_PATH} (always builds)"
    )
    parser.add_argument(
        "--cuda", action="store_true", help="with SelectiveScan's CUDA kernel (needs nvcc)"
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="build the native C/C++ runtime (runtime/native: libmvgpt, mvgpt-cli) instead",
    )
    args = parser.parse_args(argv)
    try:
        if args.native:
            if args.force or args.werror or not native_is_up_to_date():
                path = build_native_runtime(werror=args.werror, verbose=args.verbose)
            else:
                path = NATIVE_LIB_PATH
            print(path)
            return 0
        path = build(
            force=args.force,
            verbose=args.verbose,
            werror=args.werror,
            output=args.output,
            cuda=True if args.cuda else None,
        )
    except KernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
