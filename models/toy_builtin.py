"""Make the built-in model (issue 16): export a trained toy checkpoint into the runtime's
``builtin/`` folder and pick the sample video that ships with it.

    python -m mvgpt.models.toy_builtin --checkpoint DIR/checkpoint --clip DIR/clip
        [--precision fp32] [--out runtime/builtin]

writes OUT/toy-shapes/ (the package, by ``mvgpt.exporter.package.export_package``), OUT/sample.mp4
and OUT/sample.json. The sample is a held-out scene (toy_videos' split) of at most
``SAMPLE_MAX_SIZE`` pixels and ``SAMPLE_MAX_SECONDS`` with three objects that allows all four kinds
of question (one of each is asked, ``pick_questions``' per-type choice). Seeds are tried in
order; a scene is kept when the exported package answers its four questions correctly through
``Pipeline`` on the written mp4, and sample.json lists the seeds tried before it with the
answers that were wrong, so the choice is on record.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from mvgpt.models import toy_videos as tv

SAMPLE_MAX_SIZE = (360, 280)  # width, height
SAMPLE_MAX_SECONDS = 10.0
SAMPLE_OBJECTS = 3
PACKAGE_NAME = "toy-shapes"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "runtime" / "builtin"


def asked_kinds(scene: tv.Scene) -> set[str]:
    return {q.type for q in tv.questions(scene)}


def candidate_seeds(limit: int = 5000):
    """Held-out scenes that fit the sample's size, length and object count and allow every kind
    of question."""
    kinds = {q["type"] for q in tv.load_spec()["questions"]}
    for seed in tv.split_seeds("heldout", limit):
        scene = tv.make_scene(seed)
        small = scene.width <= SAMPLE_MAX_SIZE[0] and scene.height <= SAMPLE_MAX_SIZE[1]
        fits = small and scene.duration <= SAMPLE_MAX_SECONDS
        if fits and len(scene.objects) == SAMPLE_OBJECTS and kinds <= asked_kinds(scene):
            yield scene


def pick_sample(package: Path, out: Path, tries: int = 20) -> dict:
    """Write OUT/sample.mp4 and OUT/sample.json for the first candidate whose questions (one of
    each kind) are all answered correctly; ``checked`` names the kinds that had to be right (the
    demo test checks them) and ``answers`` records what the package said."""
    from mvgpt.runtime import Pipeline

    pipeline = Pipeline.load(package)
    skipped = []
    for scene in list(candidate_seeds())[:tries]:
        asked = tv.pick_questions(scene, "per-type")
        with tempfile.TemporaryDirectory(prefix="mvgpt-sample-") as tmp:
            video = tv.write_mp4(scene, Path(tmp) / "sample.mp4")
            encoding = pipeline.encode(video)
            got = [pipeline.answer(encoding, q.question, max_new_tokens=8).text for q in asked]
            wrong = [(q.question, a) for q, a in zip(asked, got, strict=True) if a != q.answer]
            if not wrong:
                shutil.copy(video, out / "sample.mp4")
                sample = {
                    "video": "sample.mp4",
                    "seed": scene.seed,
                    "scene": scene.to_dict(),
                    "questions": [q.__dict__ for q in asked],
                    "answers": got,
                    "checked": [q.type for q in asked],
                    "seeds_tried_before": skipped,
                }
                (out / "sample.json").write_text(json.dumps(sample, indent=1) + "\n")
                return sample
        skipped.append({"seed": scene.seed, "wrong": wrong})
    raise RuntimeError(f"no sample among {tries} candidates was answered correctly: {skipped}")


def build(checkpoint: Path, clip: Path, out: Path, precision: str = "fp32") -> dict:
    """Export the package into OUT/toy-shapes and pick the sample; returns sample.json's data."""
    from mvgpt.exporter.package import export_package

    out.mkdir(parents=True, exist_ok=True)
    package = out / PACKAGE_NAME
    export_package(checkpoint, clip, package, precision=precision)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["source"]["checkpoint"] = "toy checkpoint (mvgpt.models.toy_train)"
    manifest["source"]["clip"] = "toy checkpoint (mvgpt.models.toy_train)"
    (package / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return pick_sample(package, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    sample = build(args.checkpoint, args.clip, args.out, args.precision)
    sys.stdout.write(f"wrote {args.out / PACKAGE_NAME} and sample seed {sample['seed']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
