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


def test_a_cmake_project_adds_the_runtime_with_add_subdirectory(tmp_path):
    """A C++ project of its own: add_subdirectory(runtime/native), link mvgpt, build the README
    example with CMake (the dependencies' -D arguments as the set-up passes them), run it."""
    from mvgpt.kernels.native_build import find_tool, native_cmake_defines

    readme = (ROOT / "README.md").read_text()
    example = re.search(r"<!-- cpp-example:[^>]*-->\n```cpp\n(.*?)```", readme, re.S).group(1)
    project = tmp_path / "app"
    project.mkdir()
    (project / "main.cc").write_text(example)
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(app LANGUAGES CXX)\n"
        f'add_subdirectory("{ROOT / "runtime" / "native"}" mvgpt)\n'
        "add_executable(app main.cc)\nset_target_properties(app PROPERTIES CXX_STANDARD 17)\n"
        "target_link_libraries(app PRIVATE mvgpt)\n"
        'set_target_properties(app PROPERTIES BUILD_RPATH "${MVGPT_OUTPUT_DIR}")\n'
    )
    cmake = find_tool("cmake")
    build = tmp_path / "build"
    steps = (
        [cmake, "-S", str(project), "-B", str(build), *native_cmake_defines(),
         f"-DMVGPT_OUTPUT_DIR={build / 'out'}"],
        [cmake, "--build", str(build), "--parallel", "2"],
    )  # fmt: skip
    for step in steps:
        run = subprocess.run(step, capture_output=True, text=True)
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    env = {**os.environ, "MVGPT_OPS_LIBRARY": libmvgpt.ops_library()}
    run = subprocess.run(
        [str(build / "app"), str(builtin_package())], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.rstrip("\n").split("\n")[1])["answer"] in ("one", "two", "three")


def test_a_cmake_project_finds_the_installed_runtime(tmp_path):
    """cmake --install of runtime/native into a prefix, then a project of its own with
    find_package(mvgpt) and mvgpt::mvgpt builds and runs the README example."""
    from mvgpt.kernels.native_build import find_tool, native_cmake_defines

    cmake = find_tool("cmake")
    prefix, build = tmp_path / "prefix", tmp_path / "build"
    steps = [
        [cmake, "-S", str(ROOT / "runtime" / "native"), "-B", str(build), *native_cmake_defines(),
         f"-DMVGPT_OUTPUT_DIR={build / 'out'}"],
        [cmake, "--build", str(build), "--parallel", "2"],
        [cmake, "--install", str(build), "--prefix", str(prefix)],
    ]  # fmt: skip
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"<!-- cpp-example:[^>]*-->\n```cpp\n(.*?)```", readme, re.S).group(1)
    project = tmp_path / "app"
    project.mkdir()
    (project / "main.cc").write_text(example)
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(app LANGUAGES CXX)\n"
        "find_package(mvgpt REQUIRED)\n"
        "add_executable(app main.cc)\nset_target_properties(app PROPERTIES CXX_STANDARD 17)\n"
        "target_link_libraries(app PRIVATE mvgpt::mvgpt)\n"
    )
    steps += [
        [cmake, "-S", str(project), "-B", str(tmp_path / "app-build"),
         f"-DCMAKE_PREFIX_PATH={prefix}"],
        [cmake, "--build", str(tmp_path / "app-build")],
    ]  # fmt: skip
    for step in steps:
        run = subprocess.run(step, capture_output=True, text=True)
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    installed = sorted(p.relative_to(prefix).as_posix() for p in prefix.rglob("*") if p.is_file())
    print(installed)
    assert {"include/mvgpt.h", "include/mvgpt.hpp", "bin/mvgpt-cli"} <= set(installed)
    env = {**os.environ, "MVGPT_OPS_LIBRARY": libmvgpt.ops_library()}
    run = subprocess.run(
        [str(tmp_path / "app-build" / "app"), str(builtin_package())], capture_output=True,
        text=True, env=env, timeout=120,
    )  # fmt: skip
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.rstrip("\n").split("\n")[1])["answer"] in ("one", "two", "three")
