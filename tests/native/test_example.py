"""The README's C++ example, compiled against the native runtime and run on the built-in model:
it streams the answer, prints the JSON record, and the record's answer is what was streamed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from mvgpt.runtime.default_model import builtin_package
from tests.native import libmvgpt

ROOT = Path(__file__).resolve().parents[2]


def test_readme_cpp_example_compiles_and_answers(tmp_path):
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- cpp-example:[^>]*-->\n```cpp\n(.*?)```", readme, re.S)
    assert found, "the README's C++ example (after its cpp-example marker) is missing"
    source = tmp_path / "example.cc"
    source.write_text(found.group(1))
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    assert compiler, "no C++ compiler on PATH (the set-up command needs one too)"
    lib = libmvgpt.library_path()
    assert lib.is_file(), f"{lib}: the native runtime is not built; run the set-up command"
    build = subprocess.run(
        [compiler, "-std=c++17", "-Wall", "-Wextra", "-Werror", str(source),
         f"-I{libmvgpt.NATIVE_DIR / 'include'}", f"-L{lib.parent}", "-lmvgpt",
         f"-Wl,-rpath,{lib.parent}", "-o", str(tmp_path / "example")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    env = {**os.environ, "MVGPT_OPS_LIBRARY": libmvgpt.ops_library()}
    run = subprocess.run(
        [str(tmp_path / "example"), str(builtin_package())],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stderr
    streamed, record = run.stdout.rstrip("\n").split("\n")
    record = json.loads(record)
    assert record["answer"] == streamed and record["answer"] in ("one", "two", "three")
    assert record["custom_ops"] is True and len(record["token_ids"]) >= 1
    bad = subprocess.run(
        [str(tmp_path / "example"), str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert (
        bad.returncode == 1 and bad.stderr.startswith("error: ") and "manifest.json" in bad.stderr
    )
