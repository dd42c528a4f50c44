"""Benchmark the exporter's memory: where `mvgpt-export` of a random checkpoint reaches its peak.

Writes a random checkpoint of --size, exports it at --precision into --out, and at every
progress message of the export records the seconds since start, the current RSS (VmRSS) and the
peak so far (ru_maxrss). The step whose line first shows the final peak is where the peak
happened (between that message and the one before it). Prints one JSON line per progress
message, a summary line, and a table.

    python benchmarks/bench_export_memory.py --size 0.5b --precision int8 --out /tmp/pkg_mem
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import emit, environment, peak_rss_mib, print_table, rss_mib  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from mvgpt.models.random_checkpoint import SIZES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="0.5b")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the size's)")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--out", required=True, help="package folder to write")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="export this checkpoint folder (with --clip) instead of a random one of --size",
    )
    parser.add_argument("--clip", type=Path, help="its CLIP folder")
    parser.add_argument(
        "--min-cosine",
        type=float,
        help="passed to the exporter (random deep decoders fall below the default 0.99 bar)",
    )
    args = parser.parse_args(argv)

    import onnxruntime
    import torch

    from mvgpt.exporter.package import export_package

    env = environment(torch.get_num_threads(), {"onnxruntime": onnxruntime.__version__})
    start = time.perf_counter()
    rows = []

    def progress(message: str) -> None:
        row = {
            "bench": "export_memory",
            "s": round(time.perf_counter() - start, 1),
            "rss_mib": round(rss_mib(), 1),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "step": message.splitlines()[0],
        }
        rows.append(row)
        if "\n" in message:  # the validation and quantization tables
            print(message, file=sys.stderr)
        emit({**row, **env})

    with tempfile.TemporaryDirectory(prefix="mvgpt-mem-") as tmp:
        if args.checkpoint is not None:
            checkpoint = (args.checkpoint, args.clip or args.checkpoint.parent / "clip")
            config = json.loads((args.checkpoint / "config.json").read_text())
            sizes = {896: "0.5b", 1536: "1.5b"}  # Qwen2.5-0.5B / -1.5B widths
            args.size = sizes.get(config["hidden_size"], f"hidden {config['hidden_size']}")
        else:  # written by a child process, so that its memory is not this process's peak
            progress("writing the random checkpoint (in a child process)")
            command = [sys.executable, "-m", "mvgpt.models.random_checkpoint"]
            command += ["--size", args.size, "--out", tmp]
            command += ["--layers", str(args.layers)] if args.layers else []
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            checkpoint = (Path(tmp) / "checkpoint", Path(tmp) / "clip")
        start = time.perf_counter()
        options = {} if args.min_cosine is None else {"min_cosine": args.min_cosine}
        export_package(
            *checkpoint, args.out, precision=args.precision, progress=progress, **options
        )
        progress("done")
    peak = rows[-1]["peak_rss_mib"]
    first = next(i for i, r in enumerate(rows) if r["peak_rss_mib"] == peak)
    emit(
        {
            "bench": "export_memory_summary",
            "size": args.size,
            "layers": args.layers,
            "precision": args.precision,
            "seconds": rows[-1]["s"],
            "peak_rss_mib": peak,
            "peak_between": [rows[max(0, first - 1)]["step"], rows[first]["step"]],
            **env,
        }
    )
    print_table(
        [("step (RSS and peak at its start)", 60), ("s", 8), ("RSS MiB", 9), ("peak MiB", 9)],
        [[r["step"][:60], f"{r['s']:.1f}", f"{r['rss_mib']:.0f}", f"{r['peak_rss_mib']:.0f}"]
         for r in rows],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
