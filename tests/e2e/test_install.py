"""The package build carries the native library (issue 17): ``pip wheel`` / ``pip install`` build
it with CMake into the package, a wheel installed in a fresh virtual environment runs both custom
ops with no compiler on PATH, and a build without a compiler still installs, says why, and the
runtime falls back to the portable graphs (or fails when MVGPT_REQUIRE_NATIVE=1). The wheel also
carries the built-in model (issue 16), and the installed wheel's ``mvgpt-run --demo`` runs it.

Builds run without build isolation (setuptools, cmake and ninja from the dev extra), so the tests
need no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from mvgpt.kernels.native_build import LIB_NAME, find_tool

REPO = Path(__file__).resolve().parents[2]
LIBRARY_IN_WHEEL = f"mvgpt/kernels/lib/{LIB_NAME}"
COMPILERS = ("c++", "g++", "clang++", "cc", "gcc", "clang")

pytestmark = pytest.mark.skipif(
    find_tool("cmake") is None, reason="cmake not installed (pip install -e .[dev] brings it)"
)


def _pip(python: Path | str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def _tools_only_path(folder: Path) -> str:
    """A PATH folder with cmake and ninja only (no compiler): the Python packages' binaries
    where installed (what is on PATH may be a wrapper script that needs the rest of PATH, as
    pyenv's shims do)."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in ("cmake", "ninja"):
        found = find_tool(tool, on_path=False) or find_tool(tool)
        if found:
            (folder / tool).symlink_to(found)
    return str(folder)


def _build_wheel(out: Path, env: dict) -> subprocess.CompletedProcess:
    return _pip(sys.executable, "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-v",
                "-w", str(out), env=env)  # fmt: skip


def _fresh_venv(folder: Path) -> Path:
    """A new virtual environment that sees this interpreter's packages (numpy, onnxruntime, ...)
    but has its own site-packages, where mvgpt goes."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(folder)], check=True
    )
    return folder / "bin" / "python"


def _without_compiler(env_bin: Path) -> dict:
    """The environment of a machine without a compiler; run with cwd outside the checkout, so
    that the venv's mvgpt is the one imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CC", "MVGPT_OPS_LIBRARY")}
    env["PATH"] = str(env_bin)  # the venv's scripts only: no compiler, no cmake
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run = _build_wheel(out, {**os.environ, "MVGPT_REQUIRE_NATIVE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (whl,) = out.glob("mvgpt-*.whl")
    return whl


def test_wheel_holds_the_library_and_a_platform_tag(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert LIBRARY_IN_WHEEL in names, names
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    print(wheel.name)
    assert wheel.name.endswith(f"-py3-none-{platform}.whl")  # not "any": it holds a binary


def test_wheel_runs_both_custom_ops_without_a_compiler(wheel, tiny_package, tmp_path):
    from tests.videos import make_video

    python = _fresh_venv(tmp_path / "venv")
    run = _pip(python, "install", "--no-deps", "--no-index", str(wheel))
    assert run.returncode == 0, run.stderr[-2000:]
    env = _without_compiler(python.parent)
    probe = subprocess.run(
        [str(python), "-c",
         "import shutil; from mvgpt.runtime.sessions import library_path; "
         f"print(library_path()); print([c for c in {COMPILERS!r} if shutil.which(c)])"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    library, compilers = probe.stdout.splitlines()
    print(library, compilers)
    assert Path(library).is_relative_to(tmp_path / "venv")  # the wheel's copy, not the checkout's
    assert compilers == "[]"
    video = make_video(tmp_path / "clip.mp4", seconds=3, fps=10)
    answer = subprocess.run(
        [str(python.parent / "mvgpt-run"), str(video), "What happens?", "--model",
         str(tiny_package), "--max-new-tokens", "3", "--json"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert "portable graph" not in answer.stderr, answer.stderr  # both ops ran natively


def test_wheel_holds_the_builtin_model(wheel):
    """Every file of runtime/builtin/ (the toy package, sample.mp4, sample.json) is package data."""
    source = REPO / "runtime" / "builtin"
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    for needed in ("sample.json", "sample.mp4", "toy-shapes/manifest.json"):
        assert needed in files, f"{source / needed} missing: make the built-in model first"
    manifest = json.loads((source / "toy-shapes" / "manifest.json").read_text())
    stages = manifest["stages"].values()
    graphs = {s[k] for s in stages for k in ("file", "portable_file") if k in s}
    assert graphs and {f"toy-shapes/{g}" for g in graphs} <= set(files)
    assert any(f.endswith(".onnx.data") for f in files)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"mvgpt/runtime/builtin/{f}" for f in files} <= names, sorted(names)


def test_wheel_runs_the_demo_from_its_own_builtin(wheel, tmp_path):
    """The installed wheel's mvgpt-run --demo uses the built-in folder inside the venv."""
    python = _fresh_venv(tmp_path / "venv")
    run = _pip(python, "install", "--no-deps", "--no-index", str(wheel))
    assert run.returncode == 0, run.stderr[-2000:]
    env = _without_compiler(python.parent)
    env.pop("MVGPT_BUILTIN", None)
    demo = subprocess.run(
        [str(python.parent / "mvgpt-run"), "--demo", "--json", "--max-new-tokens", "2"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    sample = json.loads((REPO / "runtime" / "builtin" / "sample.json").read_text())
    asked = [json.loads(line)["question"] for line in demo.stdout.splitlines()]
    assert asked == [q["question"] for q in sample["questions"]]
    used = next(line for line in demo.stderr.splitlines() if "built-in toy model (" in line)
    assert str(tmp_path / "venv") in used, used  # the wheel's copy, not the checkout's


def test_install_without_a_compiler_falls_back_and_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CC")}
    env["PATH"] = _tools_only_path(tmp_path / "bin")
    out = tmp_path / "wheel"
    run = _build_wheel(out, env)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "the custom-op library was not built" in log and "no C++ compiler" in log, log[-3000:]
    assert "portable graphs" in log
    (whl,) = out.glob("mvgpt-*.whl")
    assert LIBRARY_IN_WHEEL not in zipfile.ZipFile(whl).namelist()

    required = _build_wheel(tmp_path / "required", {**env, "MVGPT_REQUIRE_NATIVE": "1"})
    assert required.returncode != 0
    assert "MVGPT_REQUIRE_NATIVE=1" in required.stdout + required.stderr


def test_cmake_builds_the_sources_the_tools_compile():
    """kernels/CMakeLists.txt and native_build.SOURCES name the same files (the tests' direct
    compiler builds use SOURCES)."""
    from mvgpt.kernels.native_build import CMAKE_LISTS, SOURCES

    text = CMAKE_LISTS.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("add_library(mvgpt_ops"))
    listed = line.split("SHARED", 1)[1].rstrip(")").split()
    assert listed == [s.name for s in SOURCES]
    assert shutil.which("cmake") or find_tool("cmake")


def test_the_build_writes_where_the_runtime_looks():
    """native_build (standard library only) and runtime.sessions each name the library's place."""
    from mvgpt.kernels.native_build import LIB_PATH
    from mvgpt.runtime.sessions import built_library_path

    assert built_library_path() == LIB_PATH
