"""An onnxruntime-gpu wheel cut down to one GPU architecture, in pieces small enough to carry.

    python benchmarks/gpu_wheel.py WHEEL --arch 90 --out .gpu_carry [--piece-mib 60]

The lent GPU machine (benchmarks/gpu_check.sh) has no onnxruntime-gpu and no network, and one
call carries at most 64 MiB; onnxruntime-gpu 1.31.1 is 255 MB, 218 MB of it the CUDA provider's
`.nv_fatbin` section: compressed cubins for sm_75/80/86/89/90/120 (1.31.1: 609 fatbin containers,
600 of them with an sm_90 cubin). This writes a wheel of the same name and files in which
- every fatbin entry that the GPU with compute capability --arch would not load has its payload
  zeroed, headers and the file's layout untouched (a container without a cubin for --arch keeps
  the newest PTX at or below it; one with neither is left whole), so it deflates to almost
  nothing;
- the TensorRT provider library is left out (mvgpt uses the CUDA provider);
- RECORD holds the new hashes and sizes;
then splits it into --out/NAME.part-NN files of at most --piece-mib MiB and prints what to run
on the device: `cat .gpu_carry/NAME.part-* > /tmp/NAME && pip install --no-deps /tmp/NAME`, then
`bash benchmarks/gpu_check.sh /tmp/NAME`.

Whether the CUDA driver accepts such a library is not known until a GPU runs it (a failure
shows as gpu_check.sh's "no CUDAExecutionProvider" or a provider that falls back to the CPU,
which the runtime reports); the untouched wheel is the fallback, in five pieces.

Exit status 1 with a one-line error for a file that is not such a wheel.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import struct
import sys
import zipfile
from collections import Counter
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_CUBIN = 1, 2
CUDA_PROVIDER = "libonnxruntime_providers_cuda.so"
DROPPED = ("libonnxruntime_providers_tensorrt.so",)


class WheelError(ValueError):
    """The input is not what this tool cuts down (the message says what)."""


def elf_section(data: bytes | bytearray, name: str) -> tuple[int, int] | None:
    """(file offset, size) of the section `name` of a little-endian ELF64 file, or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise WheelError("not a little-endian 64-bit ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (name_off,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name_off, offset, size

    _, strtab, _ = header(shstrndx)
    for i in range(shnum):
        name_off, offset, size = header(i)
        end = data.index(b"\0", strtab + name_off)
        if data[strtab + name_off : end].decode() == name:
            return offset, size
    return None


def fatbin_entries(data: bytes | bytearray, start: int, size: int):
    """(container offset, entry offset, kind, entry header size, payload size, arch) of every
    entry of the fatbin containers in data[start:start + size] (zero padding between them)."""
    pos, end = start, start + size
    while pos < end:
        magic, _, header_size, payload = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            if data[pos : pos + 8] != bytes(8):
                raise WheelError(f"fatbin: bad container magic {magic:#x} at {pos:#x}")
            pos += 8
            continue
        entry, container_end = pos + header_size, pos + header_size + payload
        while entry < container_end:
            kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", data, entry)
            (arch,) = struct.unpack_from("<I", data, entry + 28)
            yield pos, entry, kind, entry_header, entry_size, arch
            entry += entry_header + entry_size
        if entry != container_end:
            raise WheelError(f"fatbin: container at {pos:#x} ends inside an entry")
        pos = container_end


def keep_one_arch(data: bytearray, start: int, size: int, arch: int) -> Counter:
    """Zero, in place, the payload of every entry a GPU of compute capability `arch` would not
    load: its cubin where the container has one, else the newest PTX <= arch; a container with
    neither stays whole. Returns counts: kept/zeroed bytes, containers, containers left whole."""
    containers: dict[int, list] = {}
    for container, entry, kind, header, payload, entry_arch in fatbin_entries(data, start, size):
        containers.setdefault(container, []).append((entry, kind, header, payload, entry_arch))
    stats: Counter = Counter(containers=len(containers))
    for entries in containers.values():
        cubin = any(k == KIND_CUBIN and a == arch for _, k, _, _, a in entries)
        ptx = [a for _, k, _, _, a in entries if k == KIND_PTX and a <= arch]
        if not cubin and not ptx:
            stats["whole"] += 1
            stats["kept_bytes"] += sum(p for _, _, _, p, _ in entries)
            continue
        for entry, kind, header, payload, entry_arch in entries:
            if cubin:
                keep = kind == KIND_CUBIN and entry_arch == arch
            else:
                keep = kind == KIND_PTX and entry_arch == max(ptx)
            if keep:
                stats["kept_bytes"] += payload
            else:
                data[entry + header : entry + header + payload] = bytes(payload)
                stats["zeroed_bytes"] += payload
    return stats


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def cut_wheel(wheel: Path, out: Path, arch: int) -> Counter:
    """Write `out` from `wheel`: the CUDA provider pruned to `arch`, DROPPED left out, RECORD
    rewritten. Returns keep_one_arch's counts."""
    try:
        source = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise WheelError(f"{wheel}: not a wheel ({e})") from e
    with source:
        names = source.namelist()
        provider = [n for n in names if n.endswith("/" + CUDA_PROVIDER)]
        records = [n for n in names if n.endswith(".dist-info/RECORD")]
        if len(provider) != 1 or len(records) != 1:
            raise WheelError(f"{wheel}: expected one {CUDA_PROVIDER} and one RECORD")
        stats: Counter = Counter()
        written: dict[str, bytes] = {}
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as target:
            for name in names:
                if name == records[0] or name.rsplit("/", 1)[-1] in DROPPED:
                    continue
                data = source.read(name)
                if name == provider[0]:
                    data = bytearray(data)
                    where = elf_section(data, ".nv_fatbin")
                    if where is None:
                        raise WheelError(f"{name}: no .nv_fatbin section")
                    stats = keep_one_arch(data, *where, arch)
                    data = bytes(data)
                target.writestr(source.getinfo(name), data, zipfile.ZIP_DEFLATED)
                written[name] = data
            lines = []
            for line in source.read(records[0]).decode().splitlines():
                name = line.split(",", 1)[0]
                if name in written:
                    lines.append(f"{name},{_record_hash(written[name])},{len(written[name])}")
                elif name == records[0]:
                    lines.append(f"{name},,")
            target.writestr(source.getinfo(records[0]), "\n".join(lines) + "\n")
    return stats


def split(path: Path, folder: Path, piece_bytes: int) -> list[Path]:
    """`path` as folder/NAME.part-NN files of at most piece_bytes each (old pieces removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{path.name}.part-*"):
        old.unlink()
    pieces = []
    with path.open("rb") as f:
        while chunk := f.read(piece_bytes):
            pieces.append(folder / f"{path.name}.part-{len(pieces):02d}")
            pieces[-1].write_bytes(chunk)
    return pieces


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="an onnxruntime-gpu wheel")
    parser.add_argument(
        "--arch", type=int, required=True, help="compute capability: 90 = H100/H200"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the pieces")
    parser.add_argument("--piece-mib", type=float, default=60.0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cut = args.out / args.wheel.name
    if cut.resolve() == args.wheel.resolve():
        print("gpu_wheel: --out must not be the wheel's own folder", file=sys.stderr)
        return 1
    try:
        stats = cut_wheel(args.wheel, cut, args.arch)
    except (WheelError, OSError) as e:
        print(f"gpu_wheel: {e}", file=sys.stderr)
        return 1
    pieces = split(cut, args.out, int(args.piece_mib * 2**20))
    digest = hashlib.sha256(cut.read_bytes()).hexdigest()
    cut.unlink()
    print(
        f"sm_{args.arch}: kept {stats['kept_bytes'] / 1e6:.1f} MB of fatbin payloads, zeroed "
        f"{stats['zeroed_bytes'] / 1e6:.1f} MB; {stats['containers']} containers, "
        f"{stats['whole']} left whole; {len(pieces)} pieces in {args.out} "
        f"({sum(p.stat().st_size for p in pieces) / 2**20:.1f} MiB), wheel sha256 {digest}"
    )
    print(
        f"on the device: cat {args.out}/{cut.name}.part-* > /tmp/{cut.name} && "
        f"bash benchmarks/gpu_check.sh /tmp/{cut.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
