"""benchmarks/gpu_wheel.py: an onnxruntime-gpu wheel cut down to one GPU architecture.

A real wheel is 255 MB and needs the network; these tests build a stand-in: a shared library
compiled here whose `.nv_fatbin` section holds fatbin containers written by the test (cubins and
PTX for several architectures, zero padding between containers), in a wheel with a RECORD and a
TensorRT provider, and check what the tool keeps, zeroes and drops, that the pieces put back
together are an installable wheel whose RECORD matches its files, and the one-line error for a
file that is not a wheel.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "gpu_wheel", Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_wheel.py"
)
gpu_wheel = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gpu_wheel)

PTX, CUBIN = 1, 2
CONTAINERS = [  # (kind, arch, payload byte) per entry
    [(CUBIN, 80, b"A"), (CUBIN, 90, b"B"), (PTX, 90, b"G")],
    [(PTX, 80, b"C"), (PTX, 86, b"D"), (PTX, 100, b"E")],  # no sm_90 cubin: newest PTX <= 90
    [(CUBIN, 75, b"F")],  # nothing an sm_90 GPU loads: left whole
]
KEPT = {b"B", b"D", b"F"}
ENTRY_HEADER, PAYLOAD = 64, 48


def fatbin() -> bytes:
    out = b""
    for entries in CONTAINERS:
        body = b""
        for kind, arch, fill in entries:
            header = struct.pack("<HHIQ", kind, 0x101, ENTRY_HEADER, PAYLOAD).ljust(28, b"\0")
            body += (header + struct.pack("<I", arch)).ljust(ENTRY_HEADER, b"\xee") + fill * PAYLOAD
        out += struct.pack("<IHHQ", gpu_wheel.FATBIN_MAGIC, 1, 16, len(body)) + body + bytes(8)
    return out


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the stand-in CUDA provider library")
    tmp = tmp_path_factory.mktemp("gpu_wheel")
    blob = fatbin()
    source = tmp / "provider.c"
    array = ", ".join(str(b) for b in blob)
    source.write_text(
        '__attribute__((section(".nv_fatbin"), used, aligned(8)))\n'
        f"const unsigned char fatbin[{len(blob)}] = {{{array}}};\n"
        "int provider(void) { return fatbin[0]; }\n"
    )
    library = tmp / gpu_wheel.CUDA_PROVIDER
    subprocess.run(["gcc", "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    files = {
        "onnxruntime/__init__.py": b"__version__ = '0'\n",
        f"onnxruntime/capi/{gpu_wheel.CUDA_PROVIDER}": library.read_bytes(),
        "onnxruntime/capi/libonnxruntime_providers_tensorrt.so": b"\x7fELF tensorrt" * 100,
        "onnxruntime_gpu-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: onnxruntime-gpu\n"
        b"Version: 0.1\n",
        "onnxruntime_gpu-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
        b"Root-Is-Purelib: false\nTag: py3-none-any\n",
    }
    record = "onnxruntime_gpu-0.1.dist-info/RECORD"
    lines = [record_line(n, d) for n, d in files.items()] + [f"{record},,"]
    path = tmp / "onnxruntime_gpu-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(record, "\n".join(lines) + "\n")
    return path


def test_the_wheel_keeps_what_one_architecture_loads(wheel, tmp_path, capsys):
    out = tmp_path / "carry"
    args = [str(wheel), "--arch", "90", "--out", str(out), "--piece-mib", "0.001"]
    assert gpu_wheel.main(args) == 0
    said = capsys.readouterr().out
    print(said)
    pieces = sorted(out.glob(f"{wheel.name}.part-*"))
    assert len(pieces) > 1 and all(p.stat().st_size <= 0.001 * 2**20 for p in pieces)
    assert "on the device: cat" in said and "1 left whole" in said
    cut = tmp_path / wheel.name
    cut.write_bytes(b"".join(p.read_bytes() for p in pieces))
    with zipfile.ZipFile(cut) as z:
        names = set(z.namelist())
        assert "onnxruntime/capi/libonnxruntime_providers_tensorrt.so" not in names
        record = z.read("onnxruntime_gpu-0.1.dist-info/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.split(",")
            if digest:  # every file but RECORD itself, with its new hash and size
                assert line == record_line(name, z.read(name))
        assert {line.split(",")[0] for line in record} == names
        library = z.read(f"onnxruntime/capi/{gpu_wheel.CUDA_PROVIDER}")
    original = (wheel.parent / gpu_wheel.CUDA_PROVIDER).read_bytes()
    start, size = gpu_wheel.elf_section(library, ".nv_fatbin")
    assert len(library) == len(original)
    assert (
        library[:start] == original[:start] and library[start + size :] == original[start + size :]
    )
    entries = list(gpu_wheel.fatbin_entries(library, start, size))
    assert len(entries) == sum(len(c) for c in CONTAINERS)  # every header intact
    fills = [fill for container in CONTAINERS for _, _, fill in container]
    for (_, entry, _, header, payload, _), fill in zip(entries, fills, strict=True):
        got = library[entry + header : entry + header + payload]
        assert got == (fill * PAYLOAD if fill in KEPT else bytes(PAYLOAD)), fill


def test_a_file_that_is_not_a_wheel_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "not.whl"
    bad.write_bytes(b"not a zip")
    script = Path(gpu_wheel.__file__)
    run = subprocess.run(
        [sys.executable, str(script), str(bad), "--arch", "90", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(run.stderr)
    assert run.returncode == 1
    assert run.stderr.startswith("gpu_wheel: ") and len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr
