"""Build the mvgpt custom-op library: ``python -m mvgpt.kernels.build``.

Owns the one build step of mvgpt: find onnxruntime's C/C++ headers, then compile the kernel
sources with ``$CXX`` (default g++; clang++ works too) ``-O3 -shared -fPIC`` into
``kernels/lib/libmvgpt_ops.so`` (``.dylib`` on macOS). The library does not link libonnxruntime
(``ORT_API_MANUAL_INIT``); onnxruntime loads it at run time, so on macOS it is linked with
``-undefined dynamic_lookup``.

No flag depends on the CPU architecture: on x86-64 each instruction set's code is compiled under
its own target pragma and chosen at run time, and on AArch64 NEON is part of the base
architecture, so one library runs on every CPU of its architecture. ``--werror`` turns warnings
into errors; ``--output`` writes the library elsewhere (e.g. a cross-compiled one:
``CXX=aarch64-linux-gnu-g++ python -m mvgpt.kernels.build --output /tmp/libmvgpt_ops.so``).

Headers, first found wins:
1. ``$ORT_INCLUDE_DIR`` (a folder holding ``onnxruntime_cxx_api.h``);
2. an installed SDK under ``/usr/include/onnxruntime`` or ``/usr/local/include/onnxruntime``;
3. ``kernels/_headers/`` (gitignored), filled on first use from Debian 13 (trixie)'s
   ``libonnxruntime-dev`` package: ``apt-get download`` with a private apt configuration whose
   mirror is the Debian mirror this machine's own apt sources already use, then ``dpkg -x``.
   Nothing is installed system-wide. The PyPI wheel ships no headers.

The build is skipped when the library is newer than every source file (``--force`` rebuilds).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mvgpt.runtime.errors import KernelError
from mvgpt.runtime.sessions import built_library_path

KERNEL_DIR = Path(__file__).resolve().parent
SOURCES = tuple(KERNEL_DIR / s for s in ("selective_scan.cc", "attention.cc", "library.cc"))
HEADERS = tuple(
    KERNEL_DIR / h
    for h in (
        "cpu.h", "common.h", "simd.h", "ops.h", "scan_kernel.h", "attention_kernel.h",
        "selective_scan_impl.h", "attention_impl.h",
    )
)  # fmt: skip
DEPENDS = (*SOURCES, *HEADERS)  # rebuild when any of these is newer than the library
LIB_PATH = built_library_path()  # where the runtime looks for it
CXXFLAGS = ("-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra")
HEADER_CACHE = KERNEL_DIR / "_headers"
SDK_DIRS = (Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime"))
HEADER = "onnxruntime_lite_custom_op.h"
DEBIAN_SUITE = "trixie"
DEBIAN_PACKAGE = "libonnxruntime-dev"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _has_headers(folder: Path) -> bool:
    return (folder / HEADER).is_file() and (folder / "onnxruntime_cxx_api.h").is_file()


def debian_mirror(
    sources_dir: str = "/etc/apt/sources.list.d", sources_list: str = "/etc/apt/sources.list"
) -> str:
    """The Debian archive URI this machine's apt already uses (not the security archive)."""
    uris: list[str] = []
    for path in sorted(glob.glob(os.path.join(sources_dir, "*.sources"))):  # deb822 stanzas
        for stanza in Path(path).read_text(errors="replace").split("\n\n"):
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (ln.partition(":") for ln in stanza.splitlines())
                if not k.startswith("#") and v
            )
            suites = fields.get("suites", "").split()
            is_deb = "deb" in fields.get("types", "").split()
            if is_deb and suites and not all(s.endswith("-security") for s in suites):
                uris += fields.get("uris", "").split()
    paths = [sources_list, *sorted(glob.glob(os.path.join(sources_dir, "*.list")))]
    for path in paths:  # one-line format: deb [options] URI suite components...
        if not os.path.isfile(path):
            continue
        for line in Path(path).read_text(errors="replace").splitlines():
            line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb" and not line[2].endswith("-security"):
                uris.append(line[1])
    debian = [u for u in uris if re.search(r"/debian/?$", u)]
    if not debian:
        raise KernelError(
            "no Debian mirror in this machine's apt sources: expected a 'deb' source whose URI "
            f"ends in /debian in {sources_dir} or {sources_list}, got {uris or 'none'}; fix: "
            "set ORT_INCLUDE_DIR to a folder with onnxruntime's C/C++ headers"
        )
    return debian[0].rstrip("/")


def fetch_debian_headers(dest: Path = HEADER_CACHE) -> Path:
    """Download trixie's libonnxruntime-dev with a private apt config and unpack its headers."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise KernelError(
            "onnxruntime headers not found and apt-get/dpkg are missing: expected "
            f"$ORT_INCLUDE_DIR or {SDK_DIRS[0]}, got neither; fix: set ORT_INCLUDE_DIR to a folder "
            "holding onnxruntime_cxx_api.h (e.g. the include/ folder of an onnxruntime release)"
        )
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="mvgpt-apt-") as tmp:
        tmp_path = Path(tmp)
        for sub in ("lists/partial", "cache/archives/partial"):
            (tmp_path / sub).mkdir(parents=True)
        signed = f"[signed-by={KEYRING}] " if os.path.isfile(KEYRING) else ""
        sources = tmp_path / "sources.list"
        sources.write_text(f"deb {signed}{mirror} {DEBIAN_SUITE} main\n")
        opts = [
            "-o", f"Dir::Etc::sourcelist={sources}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={tmp_path / 'lists'}",
            "-o", f"Dir::Cache={tmp_path / 'cache'}",
            "-o", "Debug::NoLocking=1",
        ]  # fmt: skip
        steps = (["apt-get", *opts, "update"], ["apt-get", *opts, "download", DEBIAN_PACKAGE])
        for cmd in steps:
            run = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            if run.returncode != 0:
                raise KernelError(
                    f"'{' '.join(cmd[:1] + cmd[-2:])}' failed (exit {run.returncode}) while "
                    f"fetching onnxruntime headers from {mirror} {DEBIAN_SUITE}: "
                    f"{run.stderr.strip()[-400:]}; fix: check network access or set ORT_INCLUDE_DIR"
                )
        debs = sorted(tmp_path.glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise KernelError(f"apt-get download left no {DEBIAN_PACKAGE} .deb in {tmp}")
        unpacked = tmp_path / "x"
        run = subprocess.run(
            ["dpkg", "-x", str(debs[-1]), str(unpacked)], capture_output=True, text=True
        )
        if run.returncode != 0:
            raise KernelError(
                f"dpkg -x {debs[-1].name} failed (exit {run.returncode}): "
                f"{run.stderr.strip()[-400:]}; fix: set ORT_INCLUDE_DIR to onnxruntime headers"
            )
        found = unpacked / "usr" / "include" / "onnxruntime"
        if not _has_headers(found):
            raise KernelError(f"{debs[-1].name} holds no {HEADER} under usr/include/onnxruntime")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(found, dest)
    return dest


def find_headers(fetch: bool = True) -> Path:
    """The onnxruntime include folder: ORT_INCLUDE_DIR, an installed SDK, or the local cache."""
    env = os.environ.get("ORT_INCLUDE_DIR")
    if env:
        folder = Path(env)
        for candidate in (folder, folder / "onnxruntime"):
            if _has_headers(candidate):
                return candidate
        raise KernelError(
            f"ORT_INCLUDE_DIR={env} holds no onnxruntime headers: expected {HEADER} and "
            "onnxruntime_cxx_api.h there; fix: point it at onnxruntime's include folder or unset it"
        )
    for folder in (*SDK_DIRS, HEADER_CACHE):
        if _has_headers(folder):
            return folder
    if not fetch:
        raise KernelError(f"onnxruntime headers not found; fix: set ORT_INCLUDE_DIR ({HEADER})")
    return fetch_debian_headers()


def is_up_to_date(lib: Path = LIB_PATH) -> bool:
    """True when the library exists and is newer than every source file and this script."""
    if not lib.is_file():
        return False
    newest = max(p.stat().st_mtime for p in (*DEPENDS, Path(__file__)) if p.exists())
    return lib.stat().st_mtime >= newest


def target_machine(compiler: str) -> str:
    """The target triple of ``compiler`` (``-dumpmachine``), e.g. ``aarch64-linux-gnu``."""
    try:
        run = subprocess.run([compiler, "-dumpmachine"], capture_output=True, text=True)
    except OSError as e:
        raise KernelError(
            f"C++ compiler '{compiler}' could not run: expected g++ or clang++ (C++17), got "
            f"{e}; fix: install one (Debian/Ubuntu: apt-get install g++) or set CXX"
        ) from e
    if run.returncode != 0 or not run.stdout.strip():
        raise KernelError(
            f"'{compiler} -dumpmachine' failed (exit {run.returncode}): expected a target triple, "
            f"got {run.stderr.strip()[-300:]!r}; fix: set CXX to g++ or clang++"
        )
    return run.stdout.strip()


def compile_command(
    compiler: str,
    sources: tuple[Path, ...] | list[Path],
    output: Path,
    include: Path | None,
    shared: bool = True,
    werror: bool = False,
    target: str | None = None,
) -> list[str]:
    """The compiler command for ``sources``: the library (``shared``) or, with ``include=None``
    and ``shared=False``, a program such as ``check/kernel_check.cc``. onnxruntime's headers are
    ``-isystem`` (their warnings are not ours). ``target``: the compiler's triple when known."""
    target = target if target is not None else target_machine(compiler)
    cmd = [compiler, *CXXFLAGS, *(["-Werror"] if werror else [])]
    cmd += [f"-isystem{include}"] if include is not None else []
    if shared:
        cmd += ["-shared"] + (["-undefined", "dynamic_lookup"] if "darwin" in target else [])
    return [*cmd, *map(str, sources), "-o", str(output), "-pthread"]


def build(
    force: bool = False, verbose: bool = False, werror: bool = False, output: Path | None = None
) -> Path:
    """Compile the custom-op library if needed (always when ``output`` is given); returns its
    path."""
    lib = Path(output) if output is not None else LIB_PATH
    if output is None and not force and not werror and is_up_to_date():
        return lib
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise KernelError(
            f"C++ compiler '{compiler}' not found: expected g++ or clang++ (C++17) on PATH; fix: "
            "install it (Debian/Ubuntu: apt-get install g++) or set CXX"
        )
    include = find_headers()
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp_lib = lib.with_name(lib.name + ".tmp")
    cmd = compile_command(compiler, SOURCES, tmp_lib, include, werror=werror)
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        tmp_lib.unlink(missing_ok=True)
        raise KernelError(
            f"compiling the mvgpt kernels failed (exit {run.returncode}) with headers "
            f"from {include}:\n{run.stderr[-4000:]}\nfix: check the compiler (C++17 needed) "
            "and the headers (set ORT_INCLUDE_DIR)"
        )
    os.replace(tmp_lib, lib)
    return lib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--verbose", action="store_true", help="echo the compiler command")
    parser.add_argument("--werror", action="store_true", help="warnings are errors (rebuilds)")
    parser.add_argument(
        "--output", type=Path, help=f"write the library here instead of {LIB_PATH} (always builds)"
    )
    args = parser.parse_args(argv)
    try:
        path = build(force=args.force, verbose=args.verbose, werror=args.werror, output=args.output)
    except KernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
