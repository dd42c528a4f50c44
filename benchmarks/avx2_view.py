"""Run a command on this x86-64 CPU as if it had AVX2 and FMA but no AVX-512, VNNI or AMX.

    python benchmarks/avx2_view.py --show
    python benchmarks/avx2_view.py -- python benchmarks/bench_scan.py --threads 1
    python benchmarks/avx2_view.py --view avx512-novnni -- COMMAND

--view avx512-novnni keeps AVX-512 F/DQ/CD/BW/VL and hides VNNI, BF16, IFMA, VBMI and AMX (a
Skylake-SP's set: onnxruntime's AVX-512 int8 kernel without VNNI, which adds products in int16
like AVX2's).

Emulation (qemu's Haswell model, tests/emulation.py) proves an AVX2 CPU's results but runs
thousands of times slower; this runs natively. avx2_view.c, built here with $CC (default gcc)
into $MVGPT_CACHE (else ~/.cache/mvgpt), is preloaded into the command: Linux's CPUID faulting
(the `cpuid_fault` flag of /proc/cpuinfo; kernel 4.12+, CPUs or hypervisors that offer it) sends
every CPUID to it, and it clears the AVX-512, VNNI and AMX feature bits, so onnxruntime, PyTorch,
NumPy and mvgpt's ops choose their AVX2 kernels on the real cores; GLIBC_TUNABLES does the same
for glibc's string functions. The timings are those of THIS core running AVX2 code: an
AVX-512 core has wider load and FMA paths than a laptop's AVX2-only core, so they show the
difference between the kernel paths, not a laptop's speed. `--show` prints what the libraries
see, with and without the view.

Exit status: the command's (128 + N when a signal N ended it); 1 with a one-line error where
the view cannot be made here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("avx2_view.c")
# glibc's own AVX-512 string functions (memcpy, strlen, ...), chosen before any preload runs
GLIBC_HIDE = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX_VNNI"

_PROBE = r"""
import json, sys
seen = {}
try:
    from numpy._core._multiarray_umath import __cpu_features__ as f
except ImportError:
    from numpy.core._multiarray_umath import __cpu_features__ as f
names = ("AVX2", "FMA3", "AVX512F", "AVX512_SKX", "AVX512VNNI")
seen["numpy"] = sorted(k for k in names if f.get(k))
try:
    import torch
    seen["torch"] = torch.backends.cpu.get_cpu_capability()
except ImportError:
    pass
try:
    from mvgpt.kernels import cpu_isas
    seen["mvgpt ops"] = cpu_isas()
except Exception as e:  # the library not built: say so, not fail
    seen["mvgpt ops"] = f"unavailable ({e})"
print(json.dumps(seen))
"""


class ViewError(RuntimeError):
    """The view cannot be made on this machine (the message says why)."""


def cpu_flags() -> set[str]:
    """The CPU's flags in /proc/cpuinfo (the kernel's, which no view changes); empty if none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "flags:")
    return set(line.split(":", 1)[1].split())


VIEWS = ("avx2", "avx512-novnni")


def unavailable(view: str = "avx2") -> str:
    """Why `view` (VIEWS) cannot be made here ("" when it can)."""
    if view not in VIEWS:
        return f"view: expected one of {', '.join(VIEWS)}, got {view!r}"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"needs x86-64 Linux, this is {platform.system()} {platform.machine()}"
    flags = cpu_flags()
    if not flags:
        return "cannot read the CPU flags in /proc/cpuinfo"
    if "cpuid_fault" not in flags:
        return "this CPU (or its hypervisor) offers no CPUID faulting (no cpuid_fault flag)"
    if "avx2" not in flags or "fma" not in flags:
        return "this CPU has no AVX2 + FMA to show"
    if shutil.which(os.environ.get("CC", "gcc")) is None:
        return f"no C compiler ({os.environ.get('CC', 'gcc')}) to build avx2_view.c"
    if view == "avx512-novnni" and "avx512f" not in flags:
        return "this CPU has no AVX-512 to keep"
    return ""


def current_view(environ: dict[str, str] | None = None) -> str:
    """What a process with `environ` (default os.environ) is shown: "avx2_view",
    "avx512-novnni_view", or "native" when it runs without this preload."""
    environ = os.environ if environ is None else environ
    if "avx2_view" not in environ.get("LD_PRELOAD", ""):
        return "native"
    return f"{environ.get('MVGPT_CPU_VIEW') or 'avx2'}_view"


def visible_flags(flags: set[str], view: str) -> set[str]:
    """The /proc/cpuinfo flags (which no view changes) a process under `view` (current_view's
    names) is shown: avx2_view.c's hidden bits, by flag name."""
    if view == "avx2_view":
        return {f for f in flags if not f.startswith(("avx512", "amx")) and "vnni" not in f}
    if view == "avx512-novnni_view":
        return {f for f in flags if not f.startswith("amx") and "vnni" not in f and "bf16" not in f}
    return flags


def library() -> Path:
    """The preload library, built when missing or older than its source."""
    why = unavailable()
    if why:
        raise ViewError(why)
    cache = Path(os.environ.get("MVGPT_CACHE") or Path.home() / ".cache" / "mvgpt")
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / "avx2_view.so"
    if lib.exists() and lib.stat().st_mtime >= SOURCE.stat().st_mtime:
        return lib
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = [os.environ.get("CC", "gcc"), "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"]
    run = subprocess.run(
        [*cmd, str(SOURCE), "-o", str(tmp), "-ldl"], capture_output=True, text=True
    )
    if run.returncode != 0:
        raise ViewError(f"building avx2_view.c failed: {run.stderr.strip()[-300:]}")
    tmp.replace(lib)
    return lib


def environment(base: dict[str, str] | None = None, view: str = "avx2") -> dict[str, str]:
    """`base` (default os.environ) with the view (VIEWS) preloaded into every process started
    with it."""
    if why := unavailable(view):
        raise ViewError(why)
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = " ".join(p for p in (str(library()), env.get("LD_PRELOAD", "")) if p)
    env["MVGPT_CPU_VIEW"] = view
    if view == "avx2":
        tunables = (env.get("GLIBC_TUNABLES", ""), GLIBC_HIDE)
        env["GLIBC_TUNABLES"] = ":".join(p for p in tunables if p)
    # a sanitizer's runtime wants to be the first library; this one comes before it
    env["ASAN_OPTIONS"] = ":".join(
        p for p in (env.get("ASAN_OPTIONS", ""), "verify_asan_link_order=0") if p
    )
    return env


def seen(env: dict[str, str] | None = None) -> dict:
    """What NumPy, PyTorch (when installed) and mvgpt's ops see of this CPU under `env`."""
    run = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    if run.returncode != 0:
        raise ViewError(f"probe exited {run.returncode}: {run.stderr.strip()[-300:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="print what the libraries see")
    parser.add_argument("--view", choices=VIEWS, default="avx2", help="what the CPU shows")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command and not args.show:
        parser.error("give a command after --, or --show")
    try:
        env = environment(view=args.view)
        if args.show:
            print(json.dumps({"native": seen(None), args.view: seen(env)}))
    except ViewError as e:
        print(f"avx2_view: {e}", file=sys.stderr)
        return 1
    if not command:
        return 0
    try:
        code = subprocess.run(command, env=env).returncode
    except OSError as e:
        print(f"avx2_view: cannot run {command[0]!r}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


if __name__ == "__main__":
    sys.exit(main())
