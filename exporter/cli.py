"""``mvgpt-export``: official checkpoint (or a random one) -> validated ONNX model package.

    mvgpt-export --checkpoint DIR --clip DIR --out PKG [--precision {fp32,int8,int4,int4-b128,fp16}]
    mvgpt-export --random {tiny,0.5b,1.5b} --out PKG
    mvgpt-export --package FP32_PKG --out PKG --precision fp16   (no checkpoint needed)

A hub id instead of a folder is downloaded with huggingface_hub when online. Errors are one
stderr line and exit 1 (``--debug`` shows the traceback); usage errors exit 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from mvgpt.runtime.errors import CheckpointError, error_line

CLIP_HUB_ID = "openai/clip-vit-base-patch16"


def resolve_folder(name: str, what: str) -> Path:
    """A local folder as is; otherwise treat ``name`` as a hub id and download it."""
    path = Path(name)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return path.expanduser()
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors"]
        return Path(snapshot_download(repo_id=name, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, no permission: all one message
        reason = " ".join(str(e).split())[:300] or "no message"
        raise CheckpointError(
            f"{what} {name!r} is not a local folder and could not be downloaded from the hub: "
            f"expected a folder or a hub id that downloads, got {type(e).__name__}: {reason}; "
            "fix: pass a local folder, or check the id and the network"
        ) from e


def parse_args(argv):
    from mvgpt.exporter.half import FP16_MIN_COSINE
    from mvgpt.exporter.quantize import MIN_COSINE, PRECISIONS
    from mvgpt.models.random_checkpoint import SIZES

    parser = argparse.ArgumentParser(prog="mvgpt-export", description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="Mobile-VideoGPT folder or hub id")
    src.add_argument("--random", choices=SIZES, help="export a random checkpoint")
    src.add_argument(
        "--package", help="convert this fp32 package's graphs to --precision (no checkpoint)"
    )
    parser.add_argument("--clip", help=f"CLIP folder or hub id (default {CLIP_HUB_ID})")
    parser.add_argument("--out", required=True, help="package folder to write")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="weights: fp32, int8 (dynamic int8 MatMuls), int4 (4-bit decoder in blocks of 32, "
        "rest int8), int4-b128 (blocks of 128: faster decode, larger error), fp16 (for GPUs: "
        "fp16 weights and activations, fp16 KV cache; a stage below 0.999 cosine stays fp32)",
    )
    parser.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        help=f"agreement with fp32 each quantized graph must reach (default {MIN_COSINE}; "
        f"fp16: {FP16_MIN_COSINE})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random weights")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def run(args) -> None:
    from mvgpt.exporter.package import export_package

    def progress(message: str) -> None:
        sys.stderr.write(f"mvgpt-export: {message}\n")
        sys.stderr.flush()

    start = time.perf_counter()
    options = dict(precision=args.precision, progress=progress, min_cosine=args.min_cosine)
    if args.package:
        from mvgpt.exporter.package import convert_package

        convert_package(args.package, args.out, **options)
    elif args.random:
        from mvgpt.models.random_checkpoint import write_random_checkpoint

        with tempfile.TemporaryDirectory(prefix="mvgpt-random-") as tmp:
            progress(f"writing a random {args.random} checkpoint (weights are random)")
            ckpt, clip = write_random_checkpoint(tmp, args.random, args.seed)
            note = {"random_size": args.random, "random_seed": args.seed}
            export_package(ckpt, clip, args.out, source_note=note, **options)
    else:
        ckpt = resolve_folder(args.checkpoint, "checkpoint")
        clip = resolve_folder(args.clip or CLIP_HUB_ID, "CLIP folder")
        export_package(ckpt, clip, args.out, **options)
    progress(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:
        sys.stderr.write("mvgpt-export: interrupted; nothing was published\n")
        return 130
    except Exception as e:  # MvgptError as it is; anything else (disk full...) still one line
        if args.debug:
            raise
        sys.stderr.write(error_line("mvgpt-export", e))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
