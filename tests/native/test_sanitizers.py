"""The native runtime's tests again on a build with AddressSanitizer and UndefinedBehaviorSanitizer
(any finding aborts the run): libmvgpt and mvgpt-cli are built with
``-fsanitize=address,undefined``, and the test process (Python, which loads the library through
ctypes) starts with the ASan runtime preloaded. The stream tests run its background thread too.
The tiny package is this session's (exported once, outside the sanitized process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from mvgpt.kernels.native_build import NATIVE_CLI, build_native_runtime

ROOT = Path(__file__).resolve().parents[2]


def test_native_tests_pass_under_asan_and_ubsan(tmp_path, tiny_package):
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    assert compiler, "no C++ compiler on PATH (the set-up command needs one too)"
    lib = build_native_runtime(
        tmp_path / "lib", tmp_path / "bin", werror=True, sanitize="address,undefined"
    )  # (warnings are errors too)
    for binary in (lib, tmp_path / "bin" / NATIVE_CLI):  # the sanitizers are in
        linked = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        assert "libasan" in linked and "libubsan" in linked, linked

    def runtime_library(name: str) -> str:
        found = subprocess.run(
            [compiler, f"-print-file-name={name}"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert Path(found).is_file(), f"{compiler} has no {name} ({found})"
        return str(Path(found).resolve())

    # ASan's runtime first; libstdc++ too, or ASan cannot intercept C++ throws in a process
    # (Python) that loads libstdc++ only later
    preload = f"{runtime_library('libasan.so')} {runtime_library('libstdc++.so')}"
    env = {
        **os.environ,
        "LD_PRELOAD": preload,
        # Python's own allocations are not ours to judge: leaks off; everything else aborts
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "MVGPT_NATIVE_LIBRARY": str(lib),
        "MVGPT_NATIVE_CLI": str(tmp_path / "bin" / NATIVE_CLI),
        "MVGPT_NATIVE_STRINGS": "2000",
        "MVGPT_TEST_TINY_PACKAGE": str(tiny_package),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/native/test_tokenizer.py", "tests/native/test_pipeline.py",
         "tests/native/test_video.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    print(run.stdout[-3000:], run.stderr[-3000:])
    assert run.returncode == 0
    assert "AddressSanitizer" not in run.stderr and "runtime error" not in run.stderr
    assert " passed" in run.stdout and "failed" not in run.stdout and "skipped" not in run.stdout
