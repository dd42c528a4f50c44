"""The README's C++ example, compiled against the native runtime and run on the built-in model:
it streams the answer, prints the JSON record, and the record's answer is what was streamed; and
the same example built by CMake projects of their own, with add_subdirectory(runtime/native) and
with find_package(mvgpt) on an installed prefix."""

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
COUNTS = ("one", "two", "three")
APP_CMAKE = (
    "cmake_minimum_required(VERSION 3.18)\nproject(app LANGUAGES CXX)\n{find}\n"
    "add_executable(app main.cc)\nset_target_properties(app PROPERTIES CXX_STANDARD 17)\n"
    "target_link_libraries(app PRIVATE {target})\n"
)


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- cpp-example:[^>]*-->\n```cpp\n(.*?)```", readme, re.S)
    assert found, "the README's C++ example (after its cpp-example marker) is missing"
    return found.group(1)


def run_example(program: Path, package: Path, *video: Path) -> subprocess.CompletedProcess:
    """The example on ``package`` (with the custom-op library the set-up built)."""
    env = {**os.environ, "MVGPT_OPS_LIBRARY": libmvgpt.ops_library()}
    run = subprocess.run(
        [str(program), str(package), *map(str, video)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    print(run.stdout, run.stderr)
    return run


def answers_a_count(program: Path) -> dict:
    """Run the example on the built-in model, on frames in memory (its answer is a count word)
    and on the sample video (the right count, as the README says); the last JSON record."""
    for video, want in (((), COUNTS), ((builtin_package().parent / "sample.mp4",), ("three",))):
        run = run_example(program, builtin_package(), *video)
        assert run.returncode == 0, run.stderr
        streamed, record = run.stdout.rstrip("\n").split("\n")
        record = json.loads(record)
        assert record["answer"] == streamed and record["answer"] in want
    return record


def app_project(tmp_path: Path, find: str, target: str) -> Path:
    """A CMake project of its own around the README example."""
    project = tmp_path / "app"
    project.mkdir()
    (project / "main.cc").write_text(readme_example())
    (project / "CMakeLists.txt").write_text(APP_CMAKE.format(find=find, target=target))
    return project


def run_steps(steps: list[list[str]]) -> None:
    for step in steps:
        run = subprocess.run(step, capture_output=True, text=True)
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]


def test_readme_cpp_example_compiles_and_answers(tmp_path):
    source = tmp_path / "example.cc"
    source.write_text(readme_example())
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    assert compiler, "no C++ compiler on PATH (the set-up command needs one too)"
    lib = libmvgpt.library_path()
    assert lib.is_file(), f"{lib}: the native runtime is not built; run the set-up command"
    run_steps([
        [compiler, "-std=c++17", "-Wall", "-Wextra", "-Werror", str(source),
         f"-I{libmvgpt.NATIVE_DIR / 'include'}", f"-L{lib.parent}", "-lmvgpt",
         f"-Wl,-rpath,{lib.parent}", "-o", str(tmp_path / "example")],
    ])  # fmt: skip
    record = answers_a_count(tmp_path / "example")
    assert record["custom_ops"] is True and len(record["token_ids"]) >= 1
    bad = run_example(tmp_path / "example", tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")
    assert "manifest.json" in bad.stderr


def test_a_cmake_project_adds_the_runtime_with_add_subdirectory(tmp_path):
    """add_subdirectory(runtime/native), link mvgpt, build the README example with CMake (the
    dependencies' -D arguments as the set-up passes them), run it."""
    from mvgpt.kernels.native_build import native_cmake_defines, require_cmake

    native = ROOT / "runtime" / "native"
    project = app_project(tmp_path, f'add_subdirectory("{native}" mvgpt)', "mvgpt")
    cmake, build = require_cmake(), tmp_path / "build"
    run_steps([
        [cmake, "-S", str(project), "-B", str(build), *native_cmake_defines(),
         f"-DMVGPT_OUTPUT_DIR={build / 'out'}"],
        [cmake, "--build", str(build), "--parallel", "2"],
    ])  # fmt: skip
    answers_a_count(build / "app")


def test_a_cmake_project_finds_the_installed_runtime(tmp_path):
    """cmake --install of runtime/native into a prefix, then find_package(mvgpt) and
    mvgpt::mvgpt build the README example, which runs."""
    from mvgpt.kernels.native_build import native_cmake_defines, require_cmake

    cmake, prefix, build = require_cmake(), tmp_path / "prefix", tmp_path / "build"
    project = app_project(tmp_path, "find_package(mvgpt REQUIRED)", "mvgpt::mvgpt")
    run_steps([
        [cmake, "-S", str(ROOT / "runtime" / "native"), "-B", str(build), *native_cmake_defines(),
         f"-DMVGPT_OUTPUT_DIR={build / 'out'}"],
        [cmake, "--build", str(build), "--parallel", "2"],
        [cmake, "--install", str(build), "--prefix", str(prefix)],
        [cmake, "-S", str(project), "-B", str(tmp_path / "app-build"),
         f"-DCMAKE_PREFIX_PATH={prefix}"],
        [cmake, "--build", str(tmp_path / "app-build")],
    ])  # fmt: skip
    installed = sorted(p.relative_to(prefix).as_posix() for p in prefix.rglob("*") if p.is_file())
    print(installed)
    assert {"include/mvgpt.h", "include/mvgpt.hpp", "bin/mvgpt-cli"} <= set(installed)
    answers_a_count(tmp_path / "app-build" / "app")
