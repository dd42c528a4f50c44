"""How the mvgpt custom-op library is built, in the standard library only: setup.py loads this
file by path during ``pip install`` / ``pip wheel`` (before mvgpt is importable, without
onnxruntime), and ``python -m mvgpt.kernels.build`` (build.py) imports it.

The library is built by CMake (``kernels/CMakeLists.txt``: the sources, ``-O3 -std=c++17 -fPIC
-fvisibility=hidden -Wall -Wextra``, onnxruntime's headers as system headers, no libonnxruntime to
link: ``ORT_API_MANUAL_INIT``; ``-undefined dynamic_lookup`` on macOS). ``$CXX`` picks the
compiler (default: CMake's, g++ or clang++); CMake and Ninja come from PATH or, during a package
build, from the ``cmake`` and ``ninja`` build requirements of pyproject.toml.

No flag depends on the CPU architecture: on x86-64 each instruction set's code is compiled under
its own target pragma and chosen at run time, and on AArch64 NEON is part of the base
architecture, so one library runs on every CPU of its architecture.

onnxruntime's headers, first found wins:
1. ``$ORT_INCLUDE_DIR`` (a folder holding ``onnxruntime_cxx_api.h``);
2. an installed SDK under ``/usr/include/onnxruntime`` or ``/usr/local/include/onnxruntime``;
3. ``kernels/_headers/`` (gitignored), filled on first use from Debian 13 (trixie)'s
   ``libonnxruntime-dev`` package: ``apt-get download`` with a private apt configuration whose
   mirror is the Debian mirror this machine's own apt sources already use, then ``dpkg -x``.
   Nothing is installed system-wide. The onnxruntime wheel ships no headers.

``compile_command`` is the one direct compiler call kept: the tests use it for programs
(``check/kernel_check.cc``) and for cross builds (aarch64, clang -Werror) of the same SOURCES,
which a test checks against CMakeLists.txt.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:  # one error type with the runtime's when mvgpt is importable
    from mvgpt.runtime.errors import KernelError
except ImportError:  # loaded by setup.py before mvgpt is installed

    class KernelError(RuntimeError):  # type: ignore[no-redef]
        """The custom-op library could not be built."""


KERNEL_DIR = Path(__file__).resolve().parent
SOURCES = tuple(KERNEL_DIR / s for s in ("selective_scan.cc", "attention.cc", "library.cc"))
CUDA_SOURCES = (KERNEL_DIR / "selective_scan_cuda.cu",)  # with MVGPT_CUDA only
HEADERS = tuple(
    KERNEL_DIR / h
    for h in (
        "cpu.h", "common.h", "simd.h", "ops.h", "scan_args.h", "scan_kernel.h",
        "attention_kernel.h", "selective_scan_impl.h", "attention_impl.h", "scan_cuda.cuh",
    )
)  # fmt: skip
CMAKE_LISTS = KERNEL_DIR / "CMakeLists.txt"
DEPENDS = (*SOURCES, *CUDA_SOURCES, *HEADERS, CMAKE_LISTS)  # rebuild when any is newer
LIB_NAME = "libmvgpt_ops.dylib" if sys.platform == "darwin" else "libmvgpt_ops.so"
LIB_PATH = KERNEL_DIR / "lib" / LIB_NAME  # where the runtime looks for it (runtime.sessions)
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


def os_codename(os_release: str = "/etc/os-release") -> str:
    """This machine's Debian suite (VERSION_CODENAME), e.g. ``bookworm``."""
    try:
        for line in Path(os_release).read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "VERSION_CODENAME" and value.strip().strip('"'):
                return value.strip().strip('"')
    except OSError:
        pass
    raise KernelError(
        f"no VERSION_CODENAME in {os_release}: expected a Debian machine, got none; fix: install "
        "the packages the native runtime needs (see runtime/native/CMakeLists.txt) yourself"
    )


def fetch_debian_packages(packages: tuple[str, ...], suite: str, dest: Path, fix: str) -> Path:
    """Download ``packages`` of Debian ``suite`` with a private apt configuration (nothing is
    installed system-wide: the machine's own apt mirror, private lists and cache) and unpack them
    all into ``dest`` (replaced); returns ``dest``. ``fix`` ends every error message."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise KernelError(
            f"{', '.join(packages)} needed and apt-get/dpkg are missing: expected a Debian "
            f"machine, got none; {fix}"
        )
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="mvgpt-apt-") as tmp:
        tmp_path = Path(tmp)
        for sub in ("lists/partial", "cache/archives/partial"):
            (tmp_path / sub).mkdir(parents=True)
        signed = f"[signed-by={KEYRING}] " if os.path.isfile(KEYRING) else ""
        sources = tmp_path / "sources.list"
        sources.write_text(f"deb {signed}{mirror} {suite} main\n")
        opts = [
            "-o", f"Dir::Etc::sourcelist={sources}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={tmp_path / 'lists'}",
            "-o", f"Dir::Cache={tmp_path / 'cache'}",
            "-o", "Debug::NoLocking=1",
        ]  # fmt: skip
        steps = (["apt-get", *opts, "update"], ["apt-get", *opts, "download", *packages])
        for cmd in steps:
            run = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            if run.returncode != 0:
                raise KernelError(
                    f"'apt-get {cmd[len(opts) + 1]}' failed (exit {run.returncode}) while "
                    f"fetching {', '.join(packages)} from {mirror} {suite}: "
                    f"{run.stderr.strip()[-400:]}; {fix}"
                )
        unpacked = tmp_path / "x"
        for package in packages:
            debs = sorted(tmp_path.glob(f"{package}_*.deb"))
            if not debs:
                raise KernelError(f"apt-get download left no {package} .deb in {tmp}; {fix}")
            run = subprocess.run(
                ["dpkg", "-x", str(debs[-1]), str(unpacked)], capture_output=True, text=True
            )
            if run.returncode != 0:
                raise KernelError(
                    f"dpkg -x {debs[-1].name} failed (exit {run.returncode}): "
                    f"{run.stderr.strip()[-400:]}; {fix}"
                )
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(unpacked, dest, symlinks=True)
    return dest


def fetch_debian_headers(dest: Path = HEADER_CACHE) -> Path:
    """Download trixie's libonnxruntime-dev with a private apt config and unpack its headers."""
    fix = (
        "fix: set ORT_INCLUDE_DIR to a folder holding onnxruntime_cxx_api.h (e.g. the include/ "
        "folder of an onnxruntime release)"
    )
    with tempfile.TemporaryDirectory(prefix="mvgpt-ort-") as tmp:
        root = fetch_debian_packages((DEBIAN_PACKAGE,), DEBIAN_SUITE, Path(tmp) / "x", fix)
        found = root / "usr" / "include" / "onnxruntime"
        if not _has_headers(found):
            raise KernelError(f"{DEBIAN_PACKAGE} holds no {HEADER} under usr/include/onnxruntime")
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


def find_tool(name: str, on_path: bool = True) -> str | None:
    """``cmake`` or ``ninja``: on PATH (unless ``on_path`` is false), else the binary of the
    Python package of that name (a build requirement in pyproject.toml), else None."""
    found = shutil.which(name) if on_path else None
    if found:
        return found
    try:
        module = __import__(name)
    except ImportError:
        return None
    folder = getattr(module, "CMAKE_BIN_DIR" if name == "cmake" else "BIN_DIR", None)
    candidate = Path(folder) / name if folder else None
    return str(candidate) if candidate is not None and candidate.is_file() else None


def require_cmake() -> str:
    """CMake: on PATH or the cmake package's; KernelError saying how to get it."""
    cmake = find_tool("cmake")
    if cmake is None:
        raise KernelError(
            "CMake not found: expected cmake on PATH or the cmake Python package; fix: "
            "pip install cmake (or apt-get install cmake)"
        )
    return cmake


def cmake_commands(
    cmake: str,
    source: Path,
    build_dir: Path,
    defines: list[str],
    werror: bool,
    ninja: str | None,
    jobs: int,
) -> list[list[str]]:
    """Configure and build commands of ``source``'s CMakeLists.txt into ``build_dir`` (what it
    builds in its ``out/``), with ``defines`` (``-D`` arguments) and Ninja when there is one."""
    configure = [cmake, "-S", str(source), "-B", str(build_dir), *defines]
    if ninja:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    configure += [
        f"-DMVGPT_WERROR={'ON' if werror else 'OFF'}",
        f"-DMVGPT_OUTPUT_DIR={build_dir / 'out'}",
    ]
    return [configure, [cmake, "--build", str(build_dir), "--parallel", str(max(1, jobs))]]


def find_nvcc() -> str | None:
    """CUDA's compiler: ``$CUDACXX``, else nvcc on PATH."""
    return os.environ.get("CUDACXX") or shutil.which("nvcc")


def _onnxruntime_gpu_installed() -> bool:
    from importlib import metadata

    try:
        metadata.version("onnxruntime-gpu")
    except metadata.PackageNotFoundError:
        return False
    return True


CUDA_ON = ("1", "on", "yes")  # $MVGPT_CUDA values that ask for the CUDA kernel


def cuda_wanted(setting: str | None = None) -> bool:
    """Whether to build SelectiveScan's CUDA kernel, from ``$MVGPT_CUDA`` (or ``setting``):
    ``1``/``on``: yes (an error without nvcc); ``0``/``off``: no; unset or ``auto``: when nvcc
    is found and onnxruntime-gpu is installed (the only onnxruntime that runs it)."""
    value = (setting if setting is not None else os.environ.get("MVGPT_CUDA", "auto")).lower()
    if value in CUDA_ON:
        if find_nvcc() is None:
            raise KernelError(
                "MVGPT_CUDA=1 but no nvcc: expected $CUDACXX or nvcc on PATH; fix: install a "
                "CUDA toolkit (or pip install nvidia-cuda-nvcc), or unset MVGPT_CUDA"
            )
        return True
    if value in ("0", "off", "no"):
        return False
    if value not in ("", "auto"):
        raise KernelError(f"MVGPT_CUDA={value!r}: expected 1, 0 or auto")
    return find_nvcc() is not None and _onnxruntime_gpu_installed()


CUDA_ARCHITECTURES = ("75", "80", "86", "87", "89", "90")  # Turing .. Hopper; 87: Jetson Orin


def cuda_architectures(nvcc: str) -> str:
    """``$MVGPT_CUDA_ARCHITECTURES`` (e.g. ``native``), else those of CUDA_ARCHITECTURES this nvcc
    can compile for (``nvcc --list-gpu-arch``; all of them when it cannot say)."""
    if os.environ.get("MVGPT_CUDA_ARCHITECTURES"):
        return os.environ["MVGPT_CUDA_ARCHITECTURES"]
    run = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True)
    known = set(re.findall(r"compute_(\d+)", run.stdout)) if run.returncode == 0 else set()
    wanted = [a for a in CUDA_ARCHITECTURES if a in known] if known else list(CUDA_ARCHITECTURES)
    return ";".join(wanted or CUDA_ARCHITECTURES)


def build_library(
    output: Path = LIB_PATH, werror: bool = False, verbose: bool = False, cuda: bool | None = None
) -> Path:
    """Build the library with CMake into ``output`` (replaced atomically); returns it. ``cuda``:
    with SelectiveScan's CUDA kernel (None: ``cuda_wanted()``; a CUDA build that fails then is
    done again without it, saying so). Raises KernelError naming what is missing (CMake, a
    compiler, the headers, nvcc) or the compiler's errors."""
    if cuda is None and cuda_wanted():
        try:
            return _build_library(output, werror, verbose, cuda=True)
        except KernelError as e:
            sys.stderr.write(f"mvgpt: the CUDA kernel did not build ({e}); building without it\n")
            return _build_library(output, werror, verbose, cuda=False)
    return _build_library(output, werror, verbose, cuda=bool(cuda) and cuda_wanted("1"))


def _build_library(output: Path, werror: bool, verbose: bool, cuda: bool) -> Path:
    cmake = require_cmake()
    include = find_headers()
    defines = [f"-DORT_INCLUDE_DIR={include}", f"-DMVGPT_CUDA={'ON' if cuda else 'OFF'}"]
    nvcc = find_nvcc() if cuda else None
    if nvcc:
        defines.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        defines.append(f"-DMVGPT_CUDA_ARCHITECTURES={cuda_architectures(nvcc)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mvgpt-cmake-") as tmp:
        build_dir = Path(tmp)
        jobs = min(len(SOURCES), os.cpu_count() or 1)
        steps = cmake_commands(
            cmake, KERNEL_DIR, build_dir, defines, werror, find_tool("ninja"), jobs,
        )  # fmt: skip
        for cmd in steps:
            if verbose:
                print(" ".join(cmd), file=sys.stderr)
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                log = (run.stdout + run.stderr).strip()[-4000:]
                no_compiler = "CMAKE_CXX_COMPILER" in log and "could be found" in log
                raise KernelError(
                    "no C++ compiler found by CMake: expected g++ or clang++ (C++17) on PATH or "
                    "in $CXX; fix: install one (Debian/Ubuntu: apt-get install g++) or set CXX"
                    if no_compiler
                    else f"building the mvgpt kernels failed ('{' '.join(cmd[:2])}' exit "
                    f"{run.returncode}) with headers from {include}:\n{log}\nfix: check the "
                    "compiler (C++17 needed) and the headers (set ORT_INCLUDE_DIR)"
                )
        built = build_dir / "out" / LIB_NAME
        if not built.is_file():
            raise KernelError(f"CMake reported success but left no {built}")
        tmp_lib = output.with_name(output.name + ".tmp")
        shutil.copy2(built, tmp_lib)
        os.replace(tmp_lib, output)
    return output


# ------------------------------------------------------------------ the native runtime (libmvgpt)
# runtime/native/CMakeLists.txt: the C/C++ runtime, built by ``python -m mvgpt.kernels.build
# --native`` (the set-up command runs it after the install: it links the installed onnxruntime
# wheel's shared library, which a package build's isolated environment does not have). Its other
# dependencies are system libraries: PCRE2 (the tokenizer's regex; its runtime library is on every
# Debian system, grep needs it), ICU (NFC) and nlohmann/json (header-only). Headers missing from
# the system are fetched on Debian like onnxruntime's (``fetch_debian_packages``, the machine's own
# suite) into runtime/native/_deps/.

NATIVE_DIR = KERNEL_DIR.parent / "runtime" / "native"
NATIVE_LIB_NAME = "libmvgpt.dylib" if sys.platform == "darwin" else "libmvgpt.so"
NATIVE_LIB_DIR = NATIVE_DIR / "lib"
NATIVE_BIN_DIR = NATIVE_DIR / "bin"
NATIVE_LIB_PATH = NATIVE_LIB_DIR / NATIVE_LIB_NAME
NATIVE_CLI = "mvgpt-cli"
NATIVE_DEPS = NATIVE_DIR / "_deps"
# header -> the Debian package that has it
NATIVE_HEADERS = {"pcre2.h": "libpcre2-dev", "nlohmann/json.hpp": "nlohmann-json3-dev"}
SYSTEM_INCLUDE = (Path("/usr/include"), Path("/usr/local/include"), Path("/opt/homebrew/include"))
SYSTEM_LIB_GLOBS = ("/usr/lib/*/", "/lib/*/", "/usr/lib/", "/usr/local/lib/", "/opt/homebrew/lib/")


def native_sources() -> list[Path]:
    """Every file of the native runtime's build (it is rebuilt when one is newer)."""
    files = [NATIVE_DIR / "CMakeLists.txt"]
    for sub in ("include", "src", "tools"):
        files += sorted(p for p in (NATIVE_DIR / sub).rglob("*") if p.is_file())
    return files


def native_is_up_to_date(lib: Path = NATIVE_LIB_PATH) -> bool:
    if not lib.is_file():
        return False
    newest = max(p.stat().st_mtime for p in (*native_sources(), Path(__file__)))
    return lib.stat().st_mtime >= newest


def _system_library(stem: str) -> str | None:
    """The full path of a shared library on the system (``libpcre2-8`` -> .../libpcre2-8.so.0)."""
    suffixes = (".dylib", ".0.dylib") if sys.platform == "darwin" else (".so", ".so.0")
    for pattern in SYSTEM_LIB_GLOBS:
        for suffix in suffixes:
            found = sorted(glob.glob(f"{pattern}{stem}{suffix}"))
            if found and Path(found[0]).exists():
                return found[0]
    return None


def native_dependencies(fetch: bool = True) -> list[str]:
    """The CMake ``-D`` arguments that say where the native runtime's dependencies are."""
    fix = "fix: install libpcre2-dev and nlohmann-json3-dev (or their equivalents)"
    include: dict[str, Path] = {}
    for header in NATIVE_HEADERS:
        for folder in (*SYSTEM_INCLUDE, NATIVE_DEPS / "usr" / "include"):
            if (folder / header).is_file():
                include[header] = folder
                break
    missing = tuple(NATIVE_HEADERS[h] for h in NATIVE_HEADERS if h not in include)
    if missing:
        if not fetch:
            raise KernelError(f"{', '.join(missing)} not found; {fix}")
        with tempfile.TemporaryDirectory(prefix="mvgpt-deps-") as tmp:
            root = fetch_debian_packages(missing, os_codename(), Path(tmp) / "x", fix)
            dest = NATIVE_DEPS / "usr" / "include"
            shutil.copytree(root / "usr" / "include", dest, dirs_exist_ok=True)
        for header in NATIVE_HEADERS:
            if header not in include:
                if not (dest / header).is_file():
                    raise KernelError(f"the fetched packages hold no usr/include/{header}; {fix}")
                include[header] = dest
    pcre2 = _system_library("libpcre2-8")
    if pcre2 is None:
        raise KernelError(f"the PCRE2 library (libpcre2-8) is not on this system; {fix}")
    return [
        f"-DPCRE2_INCLUDE_DIR={include['pcre2.h']}",
        f"-DPCRE2_LIBRARY={pcre2}",
        f"-DJSON_INCLUDE_DIR={include['nlohmann/json.hpp']}",
        *_icu_defines(),
    ]


def _icu_defines() -> list[str]:
    """CMake ``-D`` arguments for ICU: none when the system has its headers (CMake's FindICU finds
    them); else libicu-dev fetched into runtime/native/_deps/icu/, with the system's libicuuc of
    its version, or that library's own package fetched too (libmvgpt then loads it from there).
    ``$MVGPT_FETCH_ICU`` (``headers`` or ``all``) fetches even so, to test this path."""
    fix = "fix: install libicu-dev"
    force = os.environ.get("MVGPT_FETCH_ICU", "")
    if not force and any((d / "unicode" / "unorm2.h").is_file() for d in SYSTEM_INCLUDE):
        return []
    root = NATIVE_DEPS / "icu"
    codename = os_codename()
    if not (root / "usr" / "include" / "unicode" / "unorm2.h").is_file():
        with tempfile.TemporaryDirectory(prefix="mvgpt-icu-") as tmp:
            fetched = fetch_debian_packages(("libicu-dev",), codename, Path(tmp) / "x", fix)
            shutil.copytree(fetched, root, symlinks=True, dirs_exist_ok=True)
    links = sorted(glob.glob(str(root / "usr" / "lib" / "*" / "libicuuc.so")))  # (links to the
    # runtime package's file: Path.glob would skip them while that is not there)
    if not links:
        raise KernelError(f"libicu-dev holds no usr/lib/*/libicuuc.so; {fix}")
    major = os.readlink(links[0]).split(".so.")[-1].split(".")[0]  # libicuuc.so.72.1 -> 72
    system = [p for g in SYSTEM_LIB_GLOBS for p in sorted(glob.glob(f"{g}libicuuc.so.{major}"))]
    defines = [f"-DICU_INCLUDE_DIR={root / 'usr' / 'include'}"]
    if system and force != "all":
        return [*defines, f"-DICU_UC_LIBRARY_RELEASE={system[0]}"]
    own = sorted(root.glob(f"usr/lib/*/libicuuc.so.{major}"))
    if not own:
        with tempfile.TemporaryDirectory(prefix="mvgpt-icu-") as tmp:
            fetched = fetch_debian_packages((f"libicu{major}",), codename, Path(tmp) / "x", fix)
            shutil.copytree(fetched, root, symlinks=True, dirs_exist_ok=True)
        own = sorted(root.glob(f"usr/lib/*/libicuuc.so.{major}"))
        if not own:
            raise KernelError(f"libicu{major} holds no libicuuc.so.{major}; {fix}")
    return [
        *defines,
        f"-DICU_UC_LIBRARY_RELEASE={own[0]}",
        f"-DMVGPT_DEPS_LIBRARY_DIR={own[0].parent}",
    ]


def onnxruntime_library() -> Path:
    """The onnxruntime shared library of the installed onnxruntime wheel (``capi/``), or the one
    ``$ORT_LIBRARY`` names."""
    env = os.environ.get("ORT_LIBRARY")
    if env:
        if not Path(env).is_file():
            raise KernelError(
                f"ORT_LIBRARY={env} is not a file; fix: point it at libonnxruntime.so.1.*"
            )
        return Path(env)
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise KernelError(
            "the onnxruntime package is not installed: expected its shared library for the native "
            "runtime, got none; fix: pip install onnxruntime (the set-up command does), or set "
            "ORT_LIBRARY"
        )
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    pattern = "libonnxruntime.*.dylib" if sys.platform == "darwin" else "libonnxruntime.so.*"
    found = sorted(capi.glob(pattern))
    if not found:
        raise KernelError(f"no {pattern} in {capi}; fix: reinstall onnxruntime or set ORT_LIBRARY")
    return found[-1]


def native_cmake_defines() -> list[str]:
    """The ``-D`` arguments runtime/native/CMakeLists.txt needs here: where onnxruntime and the
    other dependencies are (what a project that adds runtime/native with add_subdirectory passes
    too), and the custom-op library mvgpt-cli loads by default."""
    defines = native_dependencies()
    defines += [f"-DORT_INCLUDE_DIR={find_headers()}", f"-DORT_LIBRARY={onnxruntime_library()}"]
    if LIB_PATH.is_file():
        defines.append(f"-DMVGPT_OPS_LIBRARY_DEFAULT={LIB_PATH}")
    return defines


def build_native_runtime(
    lib_dir: Path = NATIVE_LIB_DIR,
    bin_dir: Path = NATIVE_BIN_DIR,
    werror: bool = False,
    sanitize: str = "",
    verbose: bool = False,
) -> Path:
    """Build libmvgpt and mvgpt-cli with CMake: the library (with a link to the onnxruntime
    library it was built against) into ``lib_dir``, the command line into ``bin_dir``; returns the
    library's path. ``sanitize``: e.g. ``address,undefined``. Raises KernelError naming what is
    missing or the compiler's errors."""
    cmake = require_cmake()
    defines = [*native_cmake_defines(), f"-DMVGPT_SANITIZE={sanitize}"]
    lib_dir, bin_dir = Path(lib_dir), Path(bin_dir)
    with tempfile.TemporaryDirectory(prefix="mvgpt-native-") as tmp:
        build_dir = Path(tmp)
        out = build_dir / "out"
        jobs = min(4, os.cpu_count() or 1)
        steps = cmake_commands(
            cmake, NATIVE_DIR, build_dir, defines, werror, find_tool("ninja"), jobs
        )
        for cmd in steps:
            if verbose:
                print(" ".join(cmd), file=sys.stderr)
            run = subprocess.run(cmd, capture_output=True, text=True)
            if "mvgpt: no OpenCV" in run.stdout:
                print(
                    "note: libmvgpt is built without video files (OpenCV's C++ API not found: "
                    "core, imgproc, videoio); fix: install it (Debian/Ubuntu: apt-get install "
                    "libopencv-videoio-dev), then python -m mvgpt.kernels.build --native --force",
                    file=sys.stderr,
                )
            if run.returncode != 0:
                log = (run.stdout + run.stderr).strip()[-4000:]
                raise KernelError(
                    f"building the native runtime failed ('{' '.join(cmd[:2])}' exit "
                    f"{run.returncode}):\n{log}\nfix: check the compiler (C++17) and the "
                    "dependencies (libpcre2-dev, libicu-dev, nlohmann-json3-dev)"
                )
        built = out / NATIVE_LIB_NAME
        if not built.is_file() or not (out / NATIVE_CLI).is_file():
            raise KernelError(f"CMake reported success but left no {built} or {NATIVE_CLI}")
        lib_dir.mkdir(parents=True, exist_ok=True)
        bin_dir.mkdir(parents=True, exist_ok=True)
        for item in out.iterdir():  # the library, the onnxruntime link, the command line
            dest = (bin_dir if item.name == NATIVE_CLI else lib_dir) / item.name
            tmp_dest = dest.with_name(dest.name + ".tmp")
            if tmp_dest.is_symlink() or tmp_dest.exists():
                tmp_dest.unlink()
            if item.is_symlink():
                tmp_dest.symlink_to(os.readlink(item))
            else:
                shutil.copy2(item, tmp_dest)
            os.replace(tmp_dest, dest)
    return lib_dir / NATIVE_LIB_NAME
