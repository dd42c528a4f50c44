"""benchmarks/avx2_view.py: this CPU, natively, seen as AVX2 + FMA without AVX-512 or VNNI.

The view is how the benchmarks time the AVX2 paths of onnxruntime and of mvgpt's ops on the real
cores, and how the whole test suite can be run as on an AVX2-only machine (README, CPUs). These
tests show that every library that picks kernels by CPUID sees the narrower CPU, that
onnxruntime really takes its AVX2 int8 kernel (the one that saturates full-range int8 weights),
that the program's own SIGSEGV handlers still get real faults, and that the built-in model
answers the same through it. Skipped, with the reason, where the machine offers no CPUID
faulting (not x86-64 Linux, or a CPU or hypervisor without it).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mvgpt.runtime import sessions
from tests.emulation import cpu_view
from tests.export.test_int8_any_cpu import matmul_errors

avx2_view = cpu_view

pytestmark = pytest.mark.skipif(bool(avx2_view.unavailable()), reason=avx2_view.unavailable())


@pytest.fixture(scope="module")
def view_env(tmp_path_factory) -> dict[str, str]:
    base = {**os.environ, "MVGPT_CACHE": str(tmp_path_factory.mktemp("view"))}
    return avx2_view.environment(base)


def test_every_library_sees_avx2_without_avx512(view_env):
    native, viewed = avx2_view.seen(None), avx2_view.seen(view_env)
    print("native", native)
    print("avx2_view", viewed)
    assert viewed["numpy"] == ["AVX2", "FMA3"]
    assert viewed["mvgpt ops"] == ["scalar", "avx2"]
    if "torch" in viewed:
        assert viewed["torch"] == "AVX2"


def test_the_avx512_view_hides_only_vnni(view_env):
    if why := avx2_view.unavailable("avx512-novnni"):
        pytest.skip(why)
    viewed = avx2_view.seen(view_env | {"MVGPT_CPU_VIEW": "avx512-novnni"})
    print("avx512-novnni", viewed)
    assert viewed["numpy"] == ["AVX2", "AVX512F", "AVX512_SKX", "FMA3"]
    assert viewed["mvgpt ops"] == ["scalar", "avx2", "avx512"]


@pytest.mark.parametrize("view", ["avx2", "avx512-novnni"])
def test_onnxruntime_takes_its_saturating_int8_kernel(view_env, view):
    if why := avx2_view.unavailable(view):
        pytest.skip(why)
    got = matmul_errors(env=view_env | {"MVGPT_CPU_VIEW": view})
    print(view, got)
    assert got["avx2"] and got["avx512f"] == (view == "avx512-novnni") and not got["vnni"]
    # full-range s8 weights overflow vpmaddubsw's int16 pairs: the kernel without VNNI ran,
    # natively (AVX2's, or AVX-512's on a Skylake-SP-like CPU)
    assert got["full_s8"] > 0
    assert got["exporter"] == 0  # the exporter's 7-bit weights stay exact


@pytest.mark.parametrize(
    "args",
    [
        # faulthandler installs its SIGSEGV handler after the view's: it must still report it
        ["-X", "faulthandler", "-c", "import ctypes; ctypes.string_at(0)"],
        # a SIGSEGV sent, not raised by an instruction, keeps its default action
        ["-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV); print('survived')"],
    ],
)
def test_a_real_segfault_still_kills_or_reaches_the_programs_handler(view_env, args):
    run = subprocess.run(
        [sys.executable, *args], env=view_env, capture_output=True, text=True, timeout=120
    )
    print(run.returncode, run.stdout[-100:], run.stderr[-300:])
    assert run.returncode == -11
    assert "survived" not in run.stdout
    if "faulthandler" in args:
        assert "Segmentation fault" in run.stderr


SCAN_SCRIPT = r"""
import sys
import onnxruntime as ort
from mvgpt import kernels
from mvgpt.kernels import portable
from mvgpt.runtime import sessions
from mvgpt.runtime.manifest import CUSTOM_OP_SCAN
model = portable.scan_model(1, 16, 40, 16, True, True, True, portable=False)
options = sessions.session_options(1, custom_op=CUSTOM_OP_SCAN)
try:
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    session.run(None, portable.random_inputs(1, 16, 40, 16, True, True, True))
except Exception as e:
    print("error:", str(e).splitlines()[-1])
else:
    print("ran:", kernels.last_isa("SelectiveScan"))
"""


@pytest.mark.skipif(
    not sessions.library_available(), reason="custom-op library not built: run setup.sh"
)
@pytest.mark.parametrize("asked, want", [(None, "ran: avx2"), ("avx512", "error:")])
def test_the_ops_take_avx2_and_refuse_what_the_view_hides(view_env, asked, want):
    env = dict(view_env)
    env.pop("MVGPT_SCAN_ISA", None)
    if asked:
        env["MVGPT_SCAN_ISA"] = asked
    run = subprocess.run(
        [sys.executable, "-c", SCAN_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = run.stdout.strip().splitlines()[-1]
    print(asked, "->", got)
    assert got.startswith(want)
    if asked:
        assert "this CPU lacks" in got


def test_the_builtin_model_answers_the_same_through_the_view(view_env):
    def demo(env):
        run = subprocess.run(
            [sys.executable, "-m", "mvgpt.runtime.cli", "--demo"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout

    native, viewed = demo(None), demo(view_env)
    print(viewed)
    assert viewed == native
