"""SelectiveScan's CUDA kernel (issue 15), on machines with and without a GPU.

Without a GPU (CI): the library builds with nvcc (``python -m mvgpt.kernels.build --cuda``), holds
device code for the GPUs it names (Jetson Orin's sm_87 and the H200's sm_90 among them), loads in
the CPU onnxruntime with the CUDA kernel registered beside the CPU one and still runs the CPU
kernel there; and the kernel's own math (scan_cuda.cuh's scan_channel, the function every GPU
thread runs) runs on the CPU through kernels/check/cuda_scan_check.cu against the float64
reference over the grid of shapes the CPU paths are checked on, the real VideoMamba-M scan
included. With a GPU (marked ``gpu``, skipped without one): the same grid on the device.

nvcc comes from a CUDA toolkit ($CUDACXX or PATH); without one these tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mvgpt.kernels import native_build, portable
from mvgpt.runtime import manifest as M
from tests import kernel_cases as kc
from tests.unit.test_kernels_emulated import SCAN_GRID, case_id

CHECK_SOURCE = native_build.KERNEL_DIR / "check" / "cuda_scan_check.cu"


def nvcc() -> str:
    found = native_build.find_nvcc()
    if found is None:
        pytest.skip("no nvcc ($CUDACXX or PATH): install a CUDA toolkit to build the CUDA kernel")
    return found


def gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def check_program(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cuda") / "cuda_scan_check"
    sources = [CHECK_SOURCE, *native_build.CUDA_SOURCES]
    arch = "-gencode=arch=compute_75,code=compute_75"  # PTX: any GPU since Turing compiles it
    cmd = [nvcc(), "-O3", "-std=c++17", "-Werror", "all-warnings", arch, *map(str, sources)]
    run = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, f"{' '.join(cmd)}:\n{run.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def cuda_library(tmp_path_factory) -> Path:
    nvcc()
    out = tmp_path_factory.mktemp("cudalib") / native_build.LIB_NAME
    return native_build.build_library(out, werror=True, cuda=True)


def run_case(program: Path, folder: Path, case: tuple, where: str) -> None:
    softplus = case[-1]
    feeds = portable.random_inputs(*case, seed=7)
    kc.write_scan_case(folder / "case.bin", feeds, softplus)
    report = kc.run_check([], program, folder / "case.bin", folder / "out.bin", where, 600)
    y = np.fromfile(folder / "out.bin", "<f4").reshape(feeds["u"].shape)
    err = kc.scan_max_rel(y, kc.scan_reference(feeds, softplus))
    print(f"{report.get('isa')} scan {case}: max rel diff {err:.2e}")
    assert report == {"op": "scan", "isa": "cuda" if where == "device" else "cuda-host"}
    assert err < kc.SCAN_MAX_REL


@pytest.mark.parametrize("case", SCAN_GRID, ids=case_id)
def test_cuda_kernel_math_matches_float64_on_the_host(check_program, tmp_path, case):
    run_case(check_program, tmp_path, case, "host")


def test_cuda_check_rejects_bad_input(check_program, tmp_path):
    (tmp_path / "bad.bin").write_bytes(b"MVGATTN1")
    bad = subprocess.run([check_program, tmp_path / "bad.bin", tmp_path / "o", "host"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and "expected the tag MVGSCAN1" in bad.stderr
    usage = subprocess.run([check_program, "x", "y", "gpu"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_library_with_cuda_holds_the_gpus_code_and_runs_on_the_cpu(cuda_library, tmp_path):
    """The CUDA build: device code for every listed architecture in the library, no shared CUDA
    runtime needed to load it, and the CPU provider still running the CPU kernel exactly as the
    plain build does (the CUDA kernel is registered for CUDAExecutionProvider only)."""
    data = cuda_library.read_bytes()
    wanted = {f"sm_{a}" for a in native_build.cuda_architectures(nvcc()).split(";")}
    found = {f"sm_{a}" for a in native_build.CUDA_ARCHITECTURES if f"sm_{a}".encode() in data}
    print(f"{cuda_library.stat().st_size / 1e6:.1f} MB, device code for {sorted(found)}")
    assert wanted >= {"sm_87", "sm_90"} and found == wanted  # Jetson Orin and H100/H200 among them
    ldd = subprocess.run(["ldd", str(cuda_library)], capture_output=True, text=True).stdout
    assert "libcudart" not in ldd, ldd  # static CUDA runtime: loads without a toolkit
    case = (1, 37, 150, 16, True, True, True)
    feeds = portable.random_inputs(*case, seed=3)
    onnx.save(portable.scan_model(*case, portable=False), tmp_path / "scan.onnx")
    np.savez(tmp_path / "feeds.npz", **feeds)
    script = (
        "import json, numpy as np, onnxruntime as ort\n"
        "from mvgpt import kernels\n"
        "from mvgpt.runtime.sessions import session_options\n"
        f"feeds = dict(np.load({str(tmp_path / 'feeds.npz')!r}))\n"
        f"s = ort.InferenceSession({str(tmp_path / 'scan.onnx')!r}, "
        "session_options(custom_op='SelectiveScan'), providers=['CPUExecutionProvider'])\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, s.run(None, feeds)[0])\n"
        "print(json.dumps([kernels.last_isa('SelectiveScan'), kernels.cpu_isas()]))\n"
        # which graph each custom-op stage of the built-in package would run on the CUDA provider
        "from mvgpt.runtime import manifest as M, package as P\n"
        "from mvgpt.runtime.default_model import builtin_package\n"
        "folder = builtin_package(); stages = P.read_manifest(folder)[M.K_STAGES]\n"
        "print(json.dumps({s: P._library_or_portable(s, op, folder, stages[s], {}, 1, 'cuda', [])"
        "[1:] for s, op in M.CUSTOM_OP_STAGES.items()}))\n"
    )
    env = {**os.environ, "MVGPT_OPS_LIBRARY": str(cuda_library)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    isa, cpu = json.loads(lines[-2])
    on_cuda = json.loads(lines[-1])
    print(f"graphs on the CUDA provider: {on_cuda}")
    # the scan's CUDA kernel counts only where it can run: the main graph with a GPU, else the
    # portable one (never a graph that would fail at its first run); the attention op: portable
    scan_graph = (
        ["video_mamba.onnx", True] if gpu_present() else [M.portable_file(M.VIDEO_MAMBA), False]
    )
    assert on_cuda == {M.VIDEO_MAMBA: scan_graph, M.DECODER: [M.portable_file(M.DECODER), False]}
    y = np.load(tmp_path / "y.npy")
    err = kc.scan_max_rel(y, kc.scan_reference(feeds, True))
    print(f"CPU provider with the CUDA build: {isa} path, max rel diff {err:.2e}")
    assert isa == cpu[-1] and err < kc.SCAN_MAX_REL


def test_cuda_build_without_nvcc_says_how_to_get_one(monkeypatch):
    monkeypatch.setenv("CUDACXX", "")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(native_build.KernelError, match="no nvcc"):
        native_build.cuda_wanted("1")
    assert native_build.cuda_wanted("0") is False
    assert native_build.cuda_wanted("auto") is False  # no nvcc: the CPU build, unchanged
    with pytest.raises(native_build.KernelError, match="expected 1, 0 or auto"):
        native_build.cuda_wanted("maybe")


@pytest.mark.gpu
@pytest.mark.parametrize("case", SCAN_GRID, ids=case_id)
def test_cuda_kernel_matches_float64_on_the_gpu(check_program, tmp_path, case):
    if not gpu_present():
        pytest.skip("no NVIDIA GPU (nvidia-smi -L): benchmarks/gpu_check.sh runs this on one")
    run_case(check_program, tmp_path, case, "device")
