"""Accuracy of the built-in toy model (issue 16) per question type, on held-out mp4 files.

The PyTorch reference (the checkpoint) and each package answer the same questions about the same
mp4 files: held-out scenes (toy_videos' split) at sizes, lengths and rates drawn from the task's
ranges, and held-out scenes at the task's edge settings (smallest/largest frame, shortest/longest
clip, lowest/highest fps). Packages answer through ``Pipeline`` on the mp4 path, the reference
through the runtime's decoding and preprocessing and the PyTorch model; every question of a
video reuses its encoding. Answers are greedy and compared with the expected word exactly.

    python benchmarks/eval_toy.py --checkpoint CK/checkpoint --clip CK/clip \
        --package fp32=PKG32 --package int8=PKG8 --package int4=PKG4 [--videos 200] [--edge 32]

Prints one JSON line per (model, video set, question type) with the environment, then a table;
``--answers FILE`` also writes every answer (one JSON line each) for agreement checks. The
decoder cosine of each quantized package is the exporter's own measurement, read from its
manifest. The videos are written under --work once and reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import emit, environment, print_table  # noqa: E402

TYPES = ("colour", "shape", "motion", "count")
EDGE_SEED_START = 500_000  # the edge videos use other held-out seeds than the ranged ones


def video_set(work: Path, name: str, count: int, edge: bool) -> list[dict]:
    """The set's question rows ({video, question, answer, question_type, seed}), written once."""
    from mvgpt.models import toy_videos as tv

    folder = work / f"{name}-{count}"
    stem = "heldout-edge" if edge else "heldout"
    jsonl = folder / f"{stem}.jsonl"
    if not jsonl.is_file():
        start = EDGE_SEED_START if edge else 0
        sys.stderr.write(f"eval_toy: writing {count} {name} videos to {folder}\n")
        tv.write_split(folder, "heldout", count, start, edge=edge, mode="all")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    for row in rows:
        row["video"] = str(folder / row["video"])
    return rows


def by_video(rows: list[dict]) -> dict[str, list[dict]]:
    videos: dict[str, list[dict]] = {}
    for row in rows:
        videos.setdefault(row["video"], []).append(row)
    return videos


class TorchModel:
    """The PyTorch reference: the runtime's decoding/preprocessing, then the model, greedy."""

    def __init__(self, checkpoint: str, clip: str, max_new_tokens: int):
        from mvgpt.models.reference_runner import ReferenceRunner
        from mvgpt.runtime.sampling import GenerationConfig

        self.runner = ReferenceRunner(checkpoint, clip)
        self.gen = GenerationConfig.official(
            self.runner.generation_config, max_new_tokens=max_new_tokens, do_sample=False
        )

    def answers(self, video: str, questions: list[str]) -> list[str]:
        import torch

        from mvgpt.runtime.preprocess import preprocess_clip, preprocess_video_mamba
        from mvgpt.runtime.prompt import decode_answer, prompt_ids
        from mvgpt.runtime.video import read_frames

        model, tokenizer = self.runner.model, self.runner.tokenizer
        frames, _ = read_frames(video, model.cfg.selection.num_frames)
        clip = torch.from_numpy(preprocess_clip(frames, center_crop=model.cfg.clip.center_crop))
        mamba = torch.from_numpy(preprocess_video_mamba(frames))
        visual, _ = model.encode_video(clip, mamba)
        out = []
        for question in questions:
            embeds = model.prompt_embeds(prompt_ids(tokenizer, question), visual)
            out.append(decode_answer(tokenizer, model.generate(embeds, self.gen)))
        return out


class PackageModel:
    """A package through ``Pipeline`` on the mp4 path."""

    def __init__(self, package: str, threads: int, max_new_tokens: int):
        from mvgpt.runtime import Pipeline

        self.pipeline = Pipeline.load(package, threads=threads)
        self.max_new_tokens = max_new_tokens

    def answers(self, video: str, questions: list[str]) -> list[str]:
        encoding = self.pipeline.encode(video)
        return [
            self.pipeline.answer(encoding, q, max_new_tokens=self.max_new_tokens).text
            for q in questions
        ]


def decoder_cosine(package: str) -> float | None:
    """The exporter's decoder cosine against fp32, from the package manifest (None for fp32)."""
    from mvgpt.runtime import manifest as M
    from mvgpt.runtime.package import read_manifest

    quant = read_manifest(package).get(M.K_QUANTIZATION) or {}
    entry = (quant.get(M.Q_STAGES) or {}).get(M.DECODER) or {}
    return entry.get(M.Q_COSINE)


def score(rows: list[dict], answers: list[str]) -> dict[str, tuple[int, int]]:
    """(right, asked) per question type and overall."""
    tally = {t: [0, 0] for t in (*TYPES, "overall")}
    for row, answer in zip(rows, answers, strict=True):
        for key in (row["question_type"], "overall"):
            tally[key][0] += int(answer == row["answer"])
            tally[key][1] += 1
    return {k: (v[0], v[1]) for k, v in tally.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint folder (omit to skip PyTorch)")
    parser.add_argument("--clip", help="CLIP folder of the checkpoint")
    parser.add_argument("--package", action="append", default=[], metavar="NAME=PKG")
    parser.add_argument("--videos", type=int, default=200, help="held-out videos (ranges)")
    parser.add_argument("--edge", type=int, default=32, help="held-out videos at edge settings")
    parser.add_argument("--work", default="/tmp/mvgpt-eval-toy", help="video folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--answers", type=Path, help="write every answer here (JSON lines)")
    args = parser.parse_args(argv)
    if bool(args.checkpoint) != bool(args.clip):
        parser.error("--checkpoint and --clip go together")
    packages = [p.split("=", 1) if "=" in p else (Path(p).name, p) for p in args.package]
    if not args.checkpoint and not packages:
        parser.error("give --checkpoint/--clip, --package NAME=PKG, or both")

    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    versions = {"onnxruntime": ort.__version__, "torch": torch.__version__, "numpy": np.__version__}
    work = Path(args.work)
    sets = {"heldout": video_set(work, "heldout", args.videos, edge=False)}
    if args.edge:
        sets["edge"] = video_set(work, "edge", args.edge, edge=True)
    models = [("pytorch", None)] if args.checkpoint else []
    models += [(name, path) for name, path in packages]
    answers_file = args.answers.open("w") if args.answers else None
    table = []
    for name, path in models:
        start = time.perf_counter()
        if path is None:
            model = TorchModel(args.checkpoint, args.clip, args.max_new_tokens)
            precision, cosine = "torch fp32", None
        else:
            model = PackageModel(path, args.threads, args.max_new_tokens)
            precision = model.pipeline.package.manifest.get("precision", "fp32")
            cosine = decoder_cosine(path)
        for set_name, rows in sets.items():
            answers: list[str] = []
            ordered: list[dict] = []
            for video, asked in by_video(rows).items():
                answers += model.answers(video, [r["question"] for r in asked])
                ordered += asked
            if answers_file:
                for row, answer in zip(ordered, answers, strict=True):
                    answers_file.write(json.dumps({"model": name, **row, "got": answer}) + "\n")
            scores = score(ordered, answers)
            for qtype, (right, asked) in scores.items():
                emit(
                    {
                        "bench": "eval_toy",
                        "model": name,
                        "package": path,
                        "precision": precision,
                        "decoder_cosine": cosine,
                        "set": set_name,
                        "videos": len(by_video(rows)),
                        "question_type": qtype,
                        "right": right,
                        "asked": asked,
                        "accuracy": right / asked if asked else None,
                        "seconds": time.perf_counter() - start,
                    }
                    | environment(args.threads, versions, "CPUExecutionProvider")
                )
            cells = [f"{100 * r / a:.1f}" if a else "-" for r, a in scores.values()]
            n = scores["overall"][1]
            table.append(
                [name, set_name, *cells, str(n), "-" if cosine is None else f"{cosine:.5f}"]
            )
    if answers_file:
        answers_file.close()
    columns = [("model", 8), ("set", 8), *((t, 7) for t in (*TYPES, "overall"))]
    print_table([*columns, ("questions", 9), ("decoder cos", 11)], table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
