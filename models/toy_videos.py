"""The toy task's videos (issue 16): scenes drawn from a seed, rendered with OpenCV, written as
mp4, the questions each scene allows, and the train/held-out split of seeds.

Every number, word and template comes from `toy_task.json` beside this file (`load_spec`); this
module holds no task constants of its own.

    python -m mvgpt.models.toy_videos --out DIR --count N --split train|heldout
        [--seed-start S] [--edge] [--questions per-type|all] [--stats]

writes DIR/{split}-{seed}.mp4, DIR/{split}.jsonl ({video, question, answer, question_type, seed})
and DIR/{split}-scenes.jsonl (each scene as drawn); `--edge` adds "-edge" to the names.
`--stats` writes no video and prints the question/answer counts of the N seeds as JSON.

Sampling (all uniform, from `random.Random`, whose `random()` stream Python keeps stable): frame
width and height (even, rejected until the aspect ratio is in range), fps (whole), duration, a
background tone, the number of objects (1, 2, 3), distinct (shape, colour) pairs, and per object
its shade, size, direction (still, left, right, up, down: each 1/5) and travel. Count, motion,
colour and shape answers are therefore uniform within their question type.

Marginals over seeds 0..1999 (`question_stats`, per-type mode: one question of each type the
video allows, 7641 questions): count and motion are asked in every video, colour in 89% and shape
in 93% of them, so by type count 26.2%, motion 26.2%, colour 23.3%, shape 24.4%; answers within
a type are uniform within 1.5 points (count 32.8/33.1/34.1%, motion 18.8-21.6%, colour
23.8-26.3%, shape 32.6-34.1%). Mode `all` asks every allowed question (11763: motion 34.2%,
two per video on average; count 17.0%).
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import hashlib
import itertools
import json
import math
import random
import string
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mvgpt.runtime.errors import MvgptError

SPEC_FILE = Path(__file__).with_name("toy_task.json")
SPLITS = ("train", "heldout")
_SHIFT = 4  # OpenCV drawing with 4 fractional bits: objects move by 1/16 pixel steps
_SPLIT_SALT = "mvgpt-toy-split:"


@functools.lru_cache(maxsize=4)
def load_spec(path: str | Path = SPEC_FILE) -> dict[str, Any]:
    """The task specification, checked for the consistency the generator relies on."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MvgptError(
            f"toy task spec {path}: expected a readable JSON file, got {e}; "
            "fix: restore models/toy_task.json"
        ) from e
    domains = {
        "colour": list(spec["colours"]),
        "shape": list(spec["shapes"]),
        "direction": spec["motion"]["directions"],
    }
    problems = []
    for q in spec["questions"]:
        if q["answer_from"] == "count":
            if len(q["answers"]) != spec["objects"]["count"][1]:
                problems.append(f"{q['type']}: one answer per object count")
        elif sorted(q["answers"]) != sorted(domains.get(q["answer_from"], [])):
            problems.append(f"{q['type']}: answers {q['answers']} != {q['answer_from']} names")
        for field in _fields(q["template"]):
            if field not in domains:
                problems.append(f"{q['type']}: unknown field {{{field}}}")
    if problems:
        raise MvgptError(
            f"toy task spec {path}: expected consistent questions, got {problems}; "
            "fix: make every answer set match the names it is drawn from"
        )
    return spec


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


class _Draw:
    """Uniform draws built on `random.Random.random()` only (its stream is stable)."""

    def __init__(self, key: str):
        self._rng = random.Random(key)

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self._rng.random()

    def integer(self, lo: int, hi: int) -> int:  # inclusive
        return lo + min(int(self._rng.random() * (hi - lo + 1)), hi - lo)

    def choice(self, items):
        return items[self.integer(0, len(items) - 1)]

    def sample(self, items, count: int) -> list:
        pool = list(items)
        return [pool.pop(self.integer(0, len(pool) - 1)) for _ in range(count)]


def hsv_rgb(draw: _Draw, ranges: dict[str, list[float]]) -> tuple[int, int, int]:
    """One 8-bit RGB colour with hue, saturation and value drawn inside `ranges`."""
    hue = draw.uniform(*ranges["hue_deg"]) % 360.0
    rgb = colorsys.hsv_to_rgb(
        hue / 360.0, draw.uniform(*ranges["saturation"]), draw.uniform(*ranges["value"])
    )
    return tuple(int(round(255 * c)) for c in rgb)


@dataclass(frozen=True)
class ToyObject:
    """One shape: sizes and positions in pixels, `start` = its bounding-box centre (x, y) in the
    first frame; it moves `travel` pixels in `direction` by the last frame."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    size: int
    start: tuple[float, float]
    direction: str
    travel: float
    speed: float  # pixels per second

    def centre(self, index: int, num_frames: int) -> tuple[float, float]:
        step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
        dx, dy = step.get(self.direction, (0, 0))
        done = self.travel * index / max(1, num_frames - 1)
        return self.start[0] + dx * done, self.start[1] + dy * done


@dataclass(frozen=True)
class Scene:
    """One video: frame geometry and timing, a background colour and its objects (drawn in
    order, later over earlier)."""

    seed: int
    split: str
    width: int
    height: int
    fps: int
    num_frames: int
    background: tuple[int, int, int]
    objects: tuple[ToyObject, ...]

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duration": self.duration}


def split_of(seed: int, spec: dict | None = None) -> str:
    """'heldout' or 'train': a fixed property of the seed (spec `split.rule`)."""
    spec = spec or load_spec()
    digest = hashlib.sha256(f"{_SPLIT_SALT}{seed}".encode()).hexdigest()
    return "heldout" if int(digest[:8], 16) % 1000 < spec["split"]["heldout_per_mille"] else "train"


def split_seeds(split: str, count: int, start: int = 0, spec: dict | None = None) -> list[int]:
    """The first `count` seeds >= `start` that belong to `split`."""
    if split not in SPLITS:
        raise MvgptError(f"split: expected one of {SPLITS}, got {split!r}; fix: pick one")
    pool = (s for s in itertools.count(start) if split_of(s, spec) == split)
    return list(itertools.islice(pool, count))


def edge_settings(spec: dict | None = None) -> list[dict[str, Any]]:
    """Every combination of the extreme frame size, duration and fps (spec `edge`)."""
    edge = (spec or load_spec())["edge"]
    combos = itertools.product(edge["frame_sizes"], edge["durations_s"], edge["fps"])
    return [{"size": tuple(s), "duration": d, "fps": f} for s, d, f in combos]


def _frame_size(draw: _Draw, frame: dict) -> tuple[int, int]:
    unit = frame["multiple_of"]
    lo_ar, hi_ar = frame["aspect_ratio"]
    while True:
        width = unit * draw.integer(-(-frame["width"][0] // unit), frame["width"][1] // unit)
        height = unit * draw.integer(-(-frame["height"][0] // unit), frame["height"][1] // unit)
        if lo_ar <= width / height <= hi_ar:
            return width, height


def _place(draw: _Draw, spec: dict, kind: tuple[str, str], frame: tuple[int, ...]) -> ToyObject:
    """One object of `kind` (shape, colour) in a (width, height, fps, num_frames) frame."""
    shape, colour = kind
    width, height, fps, num_frames = frame
    motion = spec["motion"]
    margin = motion["margin_px"]
    size = int(round(draw.uniform(*spec["objects"]["size_fraction"]) * height))
    rgb = hsv_rgb(draw, spec["colours"][colour])
    direction = draw.choice(motion["directions"])
    half = size / 2
    lo = [margin + half, margin + half]  # the centre's range, x and y, for the whole clip
    hi = [width - margin - half, height - margin - half]
    travel = 0.0
    if direction != "still":
        axis = 0 if direction in ("left", "right") else 1
        side = (width, height)[axis]
        low = motion["travel_fraction"][0]
        high = min(motion["travel_fraction"][1], (side - size - 2 * margin) / side)
        if high < low:
            raise MvgptError(
                f"toy scene: a {size}px object cannot travel {low:.0%} of a {side}px frame; "
                "fix: narrow the spec's size_fraction or aspect_ratio"
            )
        travel = draw.uniform(low, high) * side
        if direction in ("left", "up"):
            lo[axis] += travel  # the start leaves room to travel back
        else:
            hi[axis] -= travel
    start = (draw.uniform(lo[0], hi[0]), draw.uniform(lo[1], hi[1]))
    speed = travel * fps / max(1, num_frames - 1)
    return ToyObject(shape, colour, rgb, size, start, direction, travel, speed)


def make_scene(seed: int, edge: int | None = None, spec: dict | None = None) -> Scene:
    """The scene of `seed`, deterministic; `edge` (index into `edge_settings`) fixes the frame
    size, duration and fps at the corners of their ranges."""
    spec = spec or load_spec()
    draw = _Draw(f"mvgpt-toy-scene:{seed}")
    if edge is None:
        width, height = _frame_size(draw, spec["frame"])
        fps = draw.integer(*spec["fps"])
        duration = draw.uniform(*spec["duration_s"])
    else:
        setting = edge_settings(spec)[edge]
        (width, height), fps, duration = setting["size"], setting["fps"], setting["duration"]
    lo, hi = spec["duration_s"]
    num_frames = min(max(round(duration * fps), math.ceil(lo * fps)), math.floor(hi * fps))
    background = hsv_rgb(draw, spec["background"])
    count = draw.integer(*spec["objects"]["count"])
    kinds = draw.sample(list(itertools.product(spec["shapes"], spec["colours"])), count)
    objects = tuple(_place(draw, spec, kind, (width, height, fps, num_frames)) for kind in kinds)
    return Scene(seed, split_of(seed, spec), width, height, fps, num_frames, background, objects)


def _fixed(value: float) -> int:
    return int(round(value * (1 << _SHIFT)))


def _draw_frame(scene: Scene, index: int, bgr: bool) -> np.ndarray:
    order = slice(None, None, -1) if bgr else slice(None)
    frame = np.empty((scene.height, scene.width, 3), np.uint8)
    frame[:] = scene.background[order]
    for obj in scene.objects:
        x, y = obj.centre(index, scene.num_frames)
        half = (obj.size - 1) / 2  # the drawn extent spans `size` pixel centres
        colour = tuple(int(c) for c in obj.rgb[order])
        if obj.shape == "circle":
            centre = (_fixed(x), _fixed(y))
            cv2.circle(frame, centre, _fixed(half), colour, -1, cv2.LINE_8, _SHIFT)
        elif obj.shape == "square":
            corners = [(_fixed(x + d), _fixed(y + d)) for d in (-half, half)]
            cv2.rectangle(frame, *corners, colour, -1, cv2.LINE_8, _SHIFT)
        elif obj.shape == "triangle":
            corners = [(x - half, y + half), (x + half, y + half), (x, y - half)]
            points = np.array([[_fixed(a), _fixed(b)] for a, b in corners], np.int32)
            cv2.fillPoly(frame, [points], colour, cv2.LINE_8, _SHIFT)
        else:
            raise MvgptError(f"toy scene: unknown shape {obj.shape!r}; fix: use the spec's shapes")
    return frame


def render_frame(scene: Scene, index: int) -> np.ndarray:
    """Frame `index` of the scene: (height, width, 3) uint8 RGB."""
    if not 0 <= index < scene.num_frames:
        raise MvgptError(f"toy scene: frame {index} outside 0..{scene.num_frames - 1}")
    return _draw_frame(scene, index, bgr=False)


def render(scene: Scene, indices: list[int] | None = None) -> np.ndarray:
    """Frames (len(indices), height, width, 3) uint8 RGB; all frames when `indices` is None
    (a 30 s 640x480 30 fps scene is 830 MB: pass the indices you need)."""
    indices = range(scene.num_frames) if indices is None else indices
    return np.stack([render_frame(scene, i) for i in indices])


def write_mp4(scene: Scene, path: str | Path, spec: dict | None = None) -> Path:
    """Write the scene with cv2.VideoWriter (the spec's fourcc) and return the path."""
    container = (spec or load_spec())["container"]
    path = Path(path)
    fourcc = cv2.VideoWriter_fourcc(*container["fourcc"])
    writer = cv2.VideoWriter(str(path), fourcc, float(scene.fps), (scene.width, scene.height))
    if not writer.isOpened():
        raise MvgptError(
            f"toy video {path}: expected cv2.VideoWriter to open {container['fourcc']} in "
            f"{path.suffix}, got a closed writer; fix: use an OpenCV build with FFmpeg"
        )
    try:
        for index in range(scene.num_frames):
            writer.write(_draw_frame(scene, index, bgr=True))
    finally:
        writer.release()
    return path


@dataclass(frozen=True)
class Question:
    type: str
    question: str
    answer: str


def questions(scene: Scene, spec: dict | None = None) -> list[Question]:
    """Every question the spec allows for `scene` (spec `question_rule`), in spec order."""
    spec = spec or load_spec()
    domains = {"shape": list(spec["shapes"]), "colour": list(spec["colours"])}
    asked = []
    for q in spec["questions"]:
        fields = _fields(q["template"])
        if not fields:
            answer = q["answers"][len(scene.objects) - 1]
            asked.append(Question(q["type"], q["template"], answer))
            continue
        for values in itertools.product(*(domains[f] for f in fields)):
            filling = dict(zip(fields, values, strict=True))
            matches = [
                o for o in scene.objects if all(getattr(o, f) == v for f, v in filling.items())
            ]
            if len(matches) == 1:
                answer = getattr(matches[0], q["answer_from"])
                asked.append(Question(q["type"], q["template"].format(**filling), answer))
    return asked


def pick_questions(
    scene: Scene, mode: str = "per-type", spec: dict | None = None
) -> list[Question]:
    """`all` questions, or `per-type`: one of each type the scene allows, chosen by the seed."""
    asked = questions(scene, spec)
    if mode == "all":
        return asked
    if mode != "per-type":
        raise MvgptError(f"questions: expected mode 'per-type' or 'all', got {mode!r}")
    draw = _Draw(f"mvgpt-toy-questions:{scene.seed}")
    types = list(dict.fromkeys(q.type for q in asked))
    return [draw.choice([q for q in asked if q.type == t]) for t in types]


def question_stats(
    seeds: Iterable[int], mode: str = "per-type", spec: dict | None = None
) -> dict[str, Any]:
    """Counts of question types and of answers per type over `seeds` (no rendering)."""
    types: dict[str, int] = {}
    answers: dict[str, dict[str, int]] = {}
    for seed in seeds:
        for q in pick_questions(make_scene(seed, spec=spec), mode, spec):
            types[q.type] = types.get(q.type, 0) + 1
            per = answers.setdefault(q.type, {})
            per[q.answer] = per.get(q.answer, 0) + 1
    return {"types": types, "answers": answers}


def write_split(
    out: Path, split: str, count: int, start: int = 0, edge: bool = False, mode: str = "per-type"
) -> Path:
    """Write `count` videos of `split` with their questions; return the JSONL path."""
    out.mkdir(parents=True, exist_ok=True)
    rows, scenes = [], []
    num_edges = len(edge_settings())
    for i, seed in enumerate(split_seeds(split, count, start)):
        scene = make_scene(seed, edge=i % num_edges if edge else None)
        name = f"{split}{'-edge' if edge else ''}-{seed}.mp4"
        write_mp4(scene, out / name)
        scenes.append(json.dumps({"video": name, **scene.to_dict()}))
        for q in pick_questions(scene, mode):
            row = {"video": name, "question": q.question, "answer": q.answer}
            rows.append(json.dumps({**row, "question_type": q.type, "seed": seed}))
    stem = f"{split}{'-edge' if edge else ''}"
    (out / f"{stem}-scenes.jsonl").write_text("\n".join(scenes) + "\n")
    jsonl = out / f"{stem}.jsonl"
    jsonl.write_text("\n".join(rows) + "\n")
    return jsonl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the videos and JSONL files")
    parser.add_argument("--count", type=int, required=True, help="number of videos")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--seed-start", type=int, default=0, help="first seed considered")
    parser.add_argument("--edge", action="store_true", help="extreme sizes, durations and fps")
    parser.add_argument("--questions", choices=("per-type", "all"), default="per-type")
    parser.add_argument("--stats", action="store_true", help="print counts, write no video")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.count < 1 or (args.out is None and not args.stats):
        parser.error("expected --count >= 1 and --out (unless --stats)")
    try:
        if args.stats:
            seeds = split_seeds(args.split, args.count, args.seed_start)
            sys.stdout.write(json.dumps(question_stats(seeds, args.questions), indent=1) + "\n")
            return 0
        jsonl = write_split(
            args.out, args.split, args.count, args.seed_start, args.edge, args.questions
        )
    except MvgptError as e:
        if args.debug:
            raise
        sys.stderr.write(f"toy_videos: error: {e}\n")
        return 1
    sys.stdout.write(f"wrote {args.count} {args.split} videos and {jsonl}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
