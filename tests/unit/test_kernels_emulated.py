"""The kernels on CPUs this machine may lack, under user-mode emulation, so that CI on any x86-64
machine checks every path:

a. NEON: kernels/check/kernel_check.cc cross-compiled with aarch64-linux-gnu-g++ and run under
   qemu-aarch64, neon and scalar, against float64 references over a grid holding the real
   VideoMamba-M scan (1, 1152, 1569, 16), the Qwen2.5 decode attention (0.5b: 14/2/64 at 2450
   cached positions; 1.5b-like 12/2/128), caches split into ranges, and odd sizes;
b. AVX2 without AVX-512: the x86-64 check program under `qemu-x86_64 -cpu Haswell-noTSX` must
   pick avx2, and so must the real library inside onnxruntime there (python itself emulated);
c. the real library cross-compiled for AArch64 with g++ and compiled by clang++, both -Werror.

The tools are Debian packages (qemu-user, g++-aarch64-linux-gnu, clang; tests/emulation.py):
installed with apt-get when missing and running as root, else the tests that need them are
skipped with the reason. The compilers run side by side while the first tests wait for theirs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from mvgpt.kernels import build, portable
from mvgpt.runtime.errors import KernelError
from mvgpt.runtime.sessions import library_available
from tests import kernel_cases as kc
from tests.emulation import ARM, AVX2_CPU, HASWELL, missing_tools, run_python

ARM_CXX = "aarch64-linux-gnu-g++"
ARM_CPU, HASWELL_CPU = ["scalar", "neon"], ["scalar", "avx2"]


class Builds:
    """Compiler runs started together; ``wait(name)`` gives the output or skips with the reason
    the run could not start."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.jobs: dict[str, tuple[Path, list[str], subprocess.Popen | None, str]] = {}

    def start(self, name: str, tools: tuple[str, ...], make_cmd) -> None:
        why = missing_tools(*tools)
        out = self.folder / name
        cmd, proc = [], None
        if not why:
            try:
                cmd = make_cmd(out)
            except KernelError as e:
                why = str(e)
        if not why:
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.jobs[name] = (out, cmd, proc, why)

    def wait(self, name: str) -> Path:
        out, cmd, proc, why = self.jobs[name]
        if proc is None:
            pytest.skip(why)
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{err[-4000:]}"
        return out

    def close(self) -> None:
        """Stops the runs no test waited for (tests deselected)."""
        for _, _, proc, _ in self.jobs.values():
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                proc.stderr.close()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    b = Builds(tmp_path_factory.mktemp("emulated"))
    cxx = os.environ.get("CXX", "g++")

    def check(compiler: str):
        return lambda out: build.compile_command(
            compiler, [kc.CHECK_SOURCE], out, None, shared=False, werror=True
        )

    def library(compiler: str):
        return lambda out: build.compile_command(
            compiler, build.SOURCES, out, build.find_headers(fetch=False), werror=True
        )

    b.start("kernel_check_arm", ("aarch64-linux-gnu-g++", "qemu-aarch64"), check(ARM_CXX))
    b.start("kernel_check_x86", ("qemu-x86_64",), check(cxx))
    b.start("libmvgpt_ops_arm.so", ("aarch64-linux-gnu-g++",), library(ARM_CXX))
    b.start("libmvgpt_ops_clang.so", ("clang++",), library("clang++"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def arm(builds) -> Path:
    return builds.wait("kernel_check_arm")


@pytest.fixture(scope="module")
def haswell(builds) -> Path:
    return builds.wait("kernel_check_x86")


# ---------------------------------------------------------------- cases
def check_scan(prefix: list[str], program: Path, folder: Path, case: tuple, isa: str = "") -> str:
    """One scan case through the program: asserts the tolerance, returns the path that ran."""
    softplus = case[-1]
    feeds = portable.random_inputs(*case, seed=7)
    kc.write_scan_case(folder / "case.bin", feeds, softplus)
    report = kc.run_check(prefix, program, folder / "case.bin", folder / "out.bin", isa)
    y = np.fromfile(folder / "out.bin", "<f4").reshape(feeds["u"].shape)
    err = kc.scan_max_rel(y, kc.scan_reference(feeds, softplus))
    print(f"{prefix[0]} {report.get('isa')} scan {case}: max rel diff {err:.2e}")
    assert report.get("op") == "scan"
    assert err < kc.SCAN_MAX_REL
    return report["isa"]


def check_attention(
    prefix: list[str], program: Path, folder: Path, case: tuple, isa: str = ""
) -> str:
    """One decode-attention case: asserts tolerances and the range count, returns the path."""
    nh, kvh, hd, lengths, cache, in_place, rotary = case
    f = kc.feeds(np.random.default_rng(9), nh, kvh, hd, lengths, cache, True, rotary=rotary)
    kc.write_attention_case(folder / "case.bin", f, nh, kvh, hd, in_place)
    report = kc.run_check(prefix, program, folder / "case.bin", folder / "out.bin", isa)
    got = kc.read_attention_output(folder / "out.bin", f, nh, hd)
    out_diff, key_diff, exact = kc.attention_diffs(f, got, nh, kvh, hd)
    print(
        f"{prefix[0]} {report.get('isa')} attention {nh}/{kvh}/{hd} lengths {lengths} "
        f"ranges {report.get('ranges')}: max |out - ref| {out_diff:.2e}, new key {key_diff:.2e}"
    )
    assert report.get("op") == "attention"
    assert int(report["ranges"]) == max(1, min(16, (max(lengths) + 1) // 512))
    assert out_diff < kc.ATTENTION_MAX_ABS and key_diff < kc.KEY_MAX_ABS
    assert exact, "value rows or past rows differ from the inputs"
    return report["isa"]


SCAN_GRID = [  # (batch, dim, length, state, z, delta_bias, softplus)
    (1, 1152, 1569, 16, True, True, True),  # VideoMamba-M: one direction of one layer
    (2, 37, 19, 16, False, True, False),
    (1, 21, 70, 5, True, False, True),  # dim not a multiple of 4; state 5: any-state loop
    (1, 6, 130, 3, True, True, False),  # two full chunks of 64 steps and a partial one
    (1, 3, 65, 16, False, True, True),  # fewer channels than lanes
    (2, 8, 1, 1, False, False, False),
]
ATTENTION_GRID = [  # (heads, kv heads, head_dim, lengths before the step, cache, in place, rope)
    (14, 2, 64, [2449], 2450, True, True),  # Qwen2.5-0.5B, 2450 positions: 4 ranges
    (12, 2, 128, [2000, 7], 2100, False, True),  # 1.5b-like; the short row leaves ranges empty
    (14, 2, 64, [9000], 9001, True, False),  # 16 ranges (the most); longer than the rope table
    (6, 3, 12, [37, 5], 48, False, True),  # head_dim 12: a multiple of NEON's 4, not of AVX2's 8
    (20, 2, 8, [30], 40, True, True),  # 10 query heads per kv head: two register blocks
    (4, 4, 6, [30, 2], 40, False, True),  # head_dim 6: no vector width divides it -> scalar
    (1, 1, 4, [0], 1, True, True),  # the first position
]


def case_id(case) -> str:
    return "-".join(str(x) if not isinstance(x, list) else "_".join(map(str, x)) for x in case)


# ---------------------------------------------------------------- a. NEON under qemu-aarch64
@pytest.mark.parametrize("case", SCAN_GRID, ids=case_id)
def test_neon_scan_matches_float64(arm, tmp_path, case):
    assert check_scan(ARM, arm, tmp_path, case) == "neon"


@pytest.mark.parametrize("case", [(1, 64, 1569, 16, True, True, True), SCAN_GRID[2]], ids=case_id)
def test_arm_scalar_scan_matches_float64(arm, tmp_path, case):
    assert check_scan(ARM, arm, tmp_path, case, "scalar") == "scalar"


@pytest.mark.parametrize("case", ATTENTION_GRID, ids=case_id)
def test_neon_attention_matches_float64(arm, tmp_path, case):
    ran = check_attention(ARM, arm, tmp_path, case)
    assert ran == kc.attention_isa(ARM_CPU, case[2])
    assert ran == ("neon" if case[2] % 4 == 0 else "scalar")


def test_arm_scalar_attention_matches_float64(arm, tmp_path):
    assert check_attention(ARM, arm, tmp_path, ATTENTION_GRID[0], "scalar") == "scalar"


@pytest.mark.parametrize("isa", ["avx2", "avx512", "sse9"])
def test_arm_refuses_what_it_lacks(arm, tmp_path, isa):
    with pytest.raises(kc.CheckError) as e:
        check_scan(ARM, arm, tmp_path, SCAN_GRID[-1], isa)
    print(e.value.stderr)
    assert e.value.code == 2 and "expected one of this CPU's (scalar, neon)" in e.value.stderr


def run_vector(
    prefix: list[str], program: Path, folder: Path, x, y
) -> tuple[str, np.ndarray, np.ndarray]:
    kc.write_vector_case(folder / "vector.bin", x, y)
    report = kc.run_check(prefix, program, folder / "vector.bin", folder / "vector_out.bin")
    out = np.fromfile(folder / "vector_out.bin", "<f4")
    return report["isa"], out[: x.size], out[x.size :]


def test_neon_exp2_and_max_are_avx2s_bit_for_bit(arm, haswell, tmp_path):
    """simd.h's contract: NEON's exp2 (polynomial, clamp to [-127, 127], NaN -> 0) and max
    (a > b ? a : b, so NaN gives b) return AVX2's bits"""
    x, y = kc.vector_inputs()
    neon, exp2_neon, max_neon = run_vector(ARM, arm, tmp_path, x, y)
    avx2, exp2_avx2, max_avx2 = run_vector(HASWELL, haswell, tmp_path, x, y)
    bits = np.uint32
    exact = 2.0 ** x.astype(np.float64)
    normal = (x >= -126) & (x <= 127)  # outside: clamped
    rel = float(np.max(np.abs(exp2_neon[normal] - exact[normal]) / exact[normal]))
    differ = int(np.sum(exp2_neon.view(bits) != exp2_avx2.view(bits)))
    print(f"{neon} vs {avx2}: {differ} exp2 values differ; max rel |exp2 - 2^x| {rel:.2e}")
    assert (neon, avx2) == ("neon", "avx2")
    assert differ == 0 and np.array_equal(max_neon.view(bits), max_avx2.view(bits))
    assert np.array_equal(max_neon.view(bits), np.where(x > y, x, y).view(bits))
    assert rel < 3e-7  # the polynomial's fit: 1.7e-7


# ---------------------------------------------------------------- b. AVX2 under Haswell
@pytest.mark.parametrize(
    "case", [(1, 128, 1569, 16, True, True, True), *SCAN_GRID[1:4]], ids=case_id
)
def test_haswell_scan_picks_avx2(haswell, tmp_path, case):
    assert check_scan(HASWELL, haswell, tmp_path, case) == "avx2"


@pytest.mark.parametrize("case", [ATTENTION_GRID[i] for i in (0, 1, 3, 5)], ids=case_id)
def test_haswell_attention_picks_avx2(haswell, tmp_path, case):
    ran = check_attention(HASWELL, haswell, tmp_path, case)
    assert ran == kc.attention_isa(HASWELL_CPU, case[2])  # avx2 where 8 divides head_dim


def test_haswell_refuses_avx512(haswell, tmp_path):
    with pytest.raises(kc.CheckError) as e:
        check_scan(HASWELL, haswell, tmp_path, SCAN_GRID[-1], "avx512")
    print(e.value.stderr)
    assert e.value.code == 2
    assert "isa=avx512 names an instruction set this CPU lacks" in e.value.stderr
    assert "expected one of this CPU's (scalar, avx2)" in e.value.stderr


ORT_SCRIPT = """
import json, os, sys
import numpy as np
import onnxruntime as ort
from mvgpt import kernels
from mvgpt.runtime.sessions import session_options

folder, report = sys.argv[1], {}
ops = {"scan": "SelectiveScan", "attention": "GroupQueryAttention"}
for name, op in ops.items():
    options = session_options(1, custom_op=op)
    session = ort.InferenceSession(f"{folder}/{name}.onnx", options, ["CPUExecutionProvider"])
    np.savez(f"{folder}/{name}_out.npz", *session.run(None, dict(np.load(f"{folder}/{name}.npz"))))
report["ran"] = {op: kernels.last_isa(op) for op in ops.values()}
report["cpu"] = kernels.cpu_isas()
os.environ["MVGPT_SCAN_ISA"] = "avx512"
try:
    options = session_options(1, custom_op=ops["scan"])
    ort.InferenceSession(f"{folder}/scan.onnx", options, ["CPUExecutionProvider"])
    report["avx512"] = "no error"
except Exception as e:
    report["avx512"] = str(e)
print(json.dumps(report))
"""


@pytest.mark.skipif(not library_available(), reason="custom-op library not built")
def test_library_in_onnxruntime_under_haswell(tmp_path):
    """python, onnxruntime and the library all emulated on an AVX2 CPU without AVX-512"""
    scan_case = (1, 19, 40, 16, True, True, True)
    scan_feeds = portable.random_inputs(*scan_case, seed=3)
    onnx.save(portable.scan_model(*scan_case, portable=False), tmp_path / "scan.onnx")
    np.savez(tmp_path / "scan.npz", **scan_feeds)
    nh, kvh, hd = 14, 2, 64
    f = kc.feeds(np.random.default_rng(4), nh, kvh, hd, [40], 48, packed=True)
    onnx.save(kc.attention_model(nh, kvh, hd, True), tmp_path / "attention.onnx")
    np.savez(tmp_path / "attention.npz", **f)
    env = {"MVGPT_SCAN_ISA": "", "MVGPT_ATTENTION_ISA": "", "MVGPT_SCAN_THREADS": "1"}  # widest
    stdout = run_python(["-c", ORT_SCRIPT, str(tmp_path)], cpu=AVX2_CPU, env=env)
    report = json.loads(stdout.strip().splitlines()[-1])
    print(report)
    y = np.load(tmp_path / "scan_out.npz")["arr_0"]
    scan_err = kc.scan_max_rel(y, kc.scan_reference(scan_feeds, True))
    got = tuple(np.load(tmp_path / "attention_out.npz")[f"arr_{i}"] for i in range(3))
    out_diff, key_diff, exact = kc.attention_diffs(f, got, nh, kvh, hd)
    print(f"onnxruntime under Haswell: scan max rel {scan_err:.2e}, attention {out_diff:.2e}")
    assert report["ran"] == {"SelectiveScan": "avx2", "GroupQueryAttention": "avx2"}
    assert report["cpu"] == HASWELL_CPU
    assert "MVGPT_SCAN_ISA=avx512 names an instruction set this CPU lacks" in report["avx512"]
    assert scan_err < kc.SCAN_MAX_REL
    assert out_diff < kc.ATTENTION_MAX_ABS and key_diff < kc.KEY_MAX_ABS and exact


# ---------------------------------------------------------------- c. other compilers, -Werror
def test_aarch64_library_builds_with_werror(builds):
    lib = builds.wait("libmvgpt_ops_arm.so")
    assert int.from_bytes(lib.read_bytes()[18:20], "little") == 183  # ELF e_machine: AArch64
    nm = subprocess.run(
        ["aarch64-linux-gnu-nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True
    )
    exported = {line.split()[-1] for line in nm.stdout.splitlines()}
    assert {"RegisterCustomOps", "mvgpt_ops_isa", "mvgpt_ops_cpu_isas"} <= exported


def test_clang_library_builds_with_werror_and_runs(builds):
    """clang compiles the x86 paths through target attributes: the library must still work"""
    import ctypes

    import onnxruntime as ort

    lib = builds.wait("libmvgpt_ops_clang.so")
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(lib))
    case = (1, 37, 70, 16, True, True, True)
    feeds = portable.random_inputs(*case, seed=5)
    model = portable.scan_model(*case, portable=False).SerializeToString()
    y = ort.InferenceSession(model, options, ["CPUExecutionProvider"]).run(None, feeds)[0]
    err = kc.scan_max_rel(y, kc.scan_reference(feeds, True))
    report = ctypes.CDLL(str(lib))
    report.mvgpt_ops_isa.restype = ctypes.c_char_p
    ran = report.mvgpt_ops_isa(b"SelectiveScan").decode()
    print(f"clang++ library, {ran}: scan max rel {err:.2e}")
    assert ran == (kc.probed_isas() or ["scalar"])[-1]
    assert err < kc.SCAN_MAX_REL


# ---------------------------------------------------------------- d. the kernel tests themselves
def test_kernel_unit_tests_pass_on_an_avx2_only_cpu():
    """The kernel tests as an AVX2-only laptop runs them: the avx2 cases pass and assert the path
    that ran, the avx512 and neon cases are skipped saying why (never passed quietly)."""
    tests = ["tests/unit/test_scan_kernel.py", "tests/unit/test_attention_kernel.py"]
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests]
    out = run_python(args, cpu=AVX2_CPU)
    summary = out.strip().splitlines()[-1]
    print(f"under {AVX2_CPU}: {summary}")
    assert " passed" in summary and "failed" not in summary and "error" not in summary
    assert "this CPU lacks avx512: its probe shows scalar, avx2" in out
    assert "lacks avx2" not in out
