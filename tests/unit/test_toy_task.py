"""The toy task (issue 16): its spec file, scenes, rendered frames, mp4 files, questions, split
and tokenizer, each checked against the spec and against measurements of what was drawn."""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest

from mvgpt.models import toy_tokenizer as tt
from mvgpt.models import toy_videos as tv
from mvgpt.runtime.errors import MvgptError
from mvgpt.runtime.prompt import decode_answer, prompt_ids
from mvgpt.runtime.video import read_frames, sample_positions

SPEC = tv.load_spec()
SEEDS = range(300)  # scenes checked without rendering
RENDER_SEEDS = range(24)  # scenes rendered and measured
# An independent colour judge (not the spec's ranges): the nearest pure hue, if close and vivid.
ANCHOR_HUES = {"red": 0.0, "yellow": 60.0, "green": 120.0, "blue": 240.0}
MAX_HUE_DISTANCE = 28.0


def judge(rgb) -> str:
    h, s, v = colorsys.rgb_to_hsv(*(float(c) / 255 for c in rgb))
    if s < 0.25:
        return "neutral"
    if s < 0.6 or v < 0.45:
        return "unclear"
    hue = h * 360
    dist = {n: min(abs(hue - a), 360 - abs(hue - a)) for n, a in ANCHOR_HUES.items()}
    name = min(dist, key=dist.get)
    return name if dist[name] <= MAX_HUE_DISTANCE else "unclear"


def test_spec_holds_the_issue_values():
    q = {item["type"]: item for item in SPEC["questions"]}
    print({t: (item["template"], item["answers"]) for t, item in q.items()})
    assert list(SPEC["shapes"]) == ["circle", "square", "triangle"]
    assert sorted(SPEC["colours"]) == ["blue", "green", "red", "yellow"]
    assert q["colour"]["template"] == "What colour is the {shape}?"
    assert q["shape"]["template"] == "What shape is the {colour} object?"
    assert q["motion"]["template"] == "Which way does the {colour} {shape} move?"
    assert q["count"]["template"] == "How many objects are there?"
    assert q["motion"]["answers"] == ["left", "right", "up", "down", "still"]
    assert q["count"]["answers"] == ["one", "two", "three"]
    assert SPEC["objects"]["count"] == [1, 3] and SPEC["objects"]["size_fraction"] == [0.12, 0.28]
    assert SPEC["motion"]["travel_fraction"] == [0.25, 0.75]
    assert SPEC["frame"]["width"] == [160, 640] and SPEC["frame"]["height"] == [120, 480]
    assert SPEC["fps"] == [10, 30] and SPEC["duration_s"] == [6.0, 30.0]
    assert SPEC["container"]["fourcc"] == "mp4v"
    answers = [a for item in SPEC["questions"] for a in item["answers"]]
    assert all(a.islower() and a.isalpha() for a in answers)


def test_inconsistent_spec_is_rejected(tmp_path):
    broken = json.loads(tv.SPEC_FILE.read_text())
    broken["questions"][0]["answers"] = ["red", "green", "blue", "purple"]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(MvgptError, match="purple"):
        tv.load_spec(path)


def test_scenes_obey_every_range():
    frame, motion = SPEC["frame"], SPEC["motion"]
    seen = {"width": [], "height": [], "fps": [], "duration": [], "travel": [], "size": []}
    for seed in SEEDS:
        scene = tv.make_scene(seed)
        w, h = scene.width, scene.height
        seen["width"].append(w), seen["height"].append(h), seen["fps"].append(scene.fps)
        seen["duration"].append(scene.duration)
        assert frame["width"][0] <= w <= frame["width"][1] and w % 2 == 0
        assert frame["height"][0] <= h <= frame["height"][1] and h % 2 == 0
        assert frame["aspect_ratio"][0] <= w / h <= frame["aspect_ratio"][1]
        assert SPEC["fps"][0] <= scene.fps <= SPEC["fps"][1] and isinstance(scene.fps, int)
        assert SPEC["duration_s"][0] <= scene.duration <= SPEC["duration_s"][1]
        assert 1 <= len(scene.objects) <= 3
        kinds = [(o.shape, o.colour) for o in scene.objects]
        assert len(set(kinds)) == len(kinds), kinds
        assert judge(scene.background) == "neutral", scene.background
        for obj in scene.objects:
            assert obj.direction in motion["directions"]
            seen["size"].append(obj.size / h)
            assert SPEC["objects"]["size_fraction"][0] - 0.5 / h <= obj.size / h
            assert obj.size / h <= SPEC["objects"]["size_fraction"][1] + 0.5 / h
            if obj.direction != "still":
                side = w if obj.direction in ("left", "right") else h
                seen["travel"].append(obj.travel / side)
                assert motion["travel_fraction"][0] <= obj.travel / side
                assert obj.travel / side <= motion["travel_fraction"][1]
    print({k: (round(min(v), 3), round(max(v), 3)) for k, v in seen.items()})


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


SCENES = [tv.make_scene(s) for s in RENDER_SEEDS] + [
    tv.make_scene(1000 + i, edge=i) for i in range(len(tv.edge_settings()))
]


@pytest.mark.parametrize("scene", SCENES, ids=lambda s: f"{s.seed}-{s.width}x{s.height}")
def test_rendered_objects_measure_as_described(scene):
    """Each object drawn alone: its size, shape, place and travel, measured in the first and
    last frames."""
    last = scene.num_frames - 1
    lo_size, hi_size = SPEC["objects"]["size_fraction"]
    for obj in scene.objects:
        alone = replace(scene, objects=(obj,))
        first_frame, last_frame = tv.render(alone, [0, last])
        boxes = []
        for frame in (first_frame, last_frame):
            mask = np.any(frame != np.asarray(scene.background, np.uint8), axis=2)
            x0, y0, x1, y1 = _bbox(mask)
            boxes.append((x0, y0, x1, y1))
            extent_w, extent_h = x1 - x0 + 1, y1 - y0 + 1
            fill = mask.sum() / (extent_w * extent_h)
            top_row = mask[y0].sum() / extent_w
            print(obj.shape, obj.colour, obj.direction, "box", (x0, y0, x1, y1), "fill", fill)
            assert x0 >= 1 and y0 >= 1 and x1 <= scene.width - 2 and y1 <= scene.height - 2
            assert abs(extent_h - obj.size) <= 1 and abs(extent_w - obj.size) <= 1
            assert lo_size * scene.height - 1.5 <= extent_h <= hi_size * scene.height + 1.5
            if obj.shape == "circle":
                assert abs(fill - np.pi / 4) < 0.06 and top_row < 0.6
            elif obj.shape == "square":
                assert fill > 0.97 and top_row > 0.97
            else:  # apex up: a narrow top row, the full base at the bottom
                assert abs(fill - 0.5) < 0.08 and top_row < 0.2 and mask[y1].sum() >= extent_w - 1
            inside = frame[mask]
            assert (inside == np.asarray(obj.rgb, np.uint8)).all()
            assert judge(obj.rgb) == obj.colour, (obj.rgb, obj.colour)
        dx = (boxes[1][0] + boxes[1][2] - boxes[0][0] - boxes[0][2]) / 2
        dy = (boxes[1][1] + boxes[1][3] - boxes[0][1] - boxes[0][3]) / 2
        step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
        ux, uy = step[obj.direction]
        along, across = (dx * ux + dy * uy), (dx * uy - dy * ux)
        side = scene.width if ux else scene.height
        seconds = last / scene.fps
        print("moved", (dx, dy), "fraction", along / side, "speed", along / seconds, obj.speed)
        assert abs(across) <= 1.0 and (obj.direction != "still" or abs(dx) + abs(dy) <= 1.0)
        if obj.direction != "still":
            lo, hi = SPEC["motion"]["travel_fraction"]
            assert lo - 1.0 / side <= along / side <= hi + 1.0 / side
            assert abs(along / seconds - obj.speed) <= 1.0 / seconds


def test_rendered_colours_classify_as_named():
    """In the full scene, every visible pixel of each object (not under a later object) is
    judged its named colour; the background is judged neutral."""
    checked = 0
    for scene in SCENES:
        frame = tv.render_frame(scene, scene.num_frames // 2)
        assert judge(frame[0, 0]) == "neutral" and judge(frame[-1, -1]) == "neutral"
        masks = []
        for obj in scene.objects:
            alone = tv.render_frame(replace(scene, objects=(obj,)), scene.num_frames // 2)
            masks.append(np.any(alone != np.asarray(scene.background, np.uint8), axis=2))
        for i, obj in enumerate(scene.objects):
            visible = masks[i] & ~np.any(masks[i + 1 :], axis=0) if i + 1 < len(masks) else masks[i]
            colours = {judge(p) for p in np.unique(frame[visible], axis=0)}
            checked += int(visible.sum())
            assert colours <= {obj.colour}, (scene.seed, obj, colours)
    print("pixels judged", checked)
    all_objects = [o for s in range(2000) for o in tv.make_scene(s).objects]
    wrong = [(o.colour, o.rgb) for o in all_objects if judge(o.rgb) != o.colour]
    print("sampled shades", len(all_objects), "misjudged", wrong[:5])
    assert not wrong


def test_questions_follow_the_rules():
    templates = {q["type"]: q for q in SPEC["questions"]}
    for seed in SEEDS:
        scene = tv.make_scene(seed)
        asked = tv.questions(scene)
        shapes = [o.shape for o in scene.objects]
        colours = [o.colour for o in scene.objects]
        expected = {
            "colour": sum(shapes.count(s) == 1 for s in set(shapes)),
            "shape": sum(colours.count(c) == 1 for c in set(colours)),
            "motion": len(scene.objects),
            "count": 1,
        }
        got = {t: sum(q.type == t for q in asked) for t in templates}
        assert got == expected, (seed, got, expected)
        for q in asked:
            assert q.answer in templates[q.type]["answers"]
            words = q.question.rstrip("?").split()
            if q.type == "colour":
                (obj,) = [o for o in scene.objects if o.shape == words[-1]]
                assert shapes.count(words[-1]) == 1 and q.answer == obj.colour
            elif q.type == "shape":
                (obj,) = [o for o in scene.objects if o.colour == words[-2]]
                assert colours.count(words[-2]) == 1 and q.answer == obj.shape
            elif q.type == "motion":
                (obj,) = [o for o in scene.objects if (o.colour, o.shape) == tuple(words[-3:-1])]
                assert q.answer == obj.direction
            else:
                assert q.answer == templates["count"]["answers"][len(scene.objects) - 1]
        picked = tv.pick_questions(scene)
        assert sorted(q.type for q in picked) == sorted(t for t, n in expected.items() if n)
        assert tv.pick_questions(scene) == picked


def test_question_types_and_answers_are_balanced():
    stats = tv.question_stats(range(2000))
    templates = {q["type"]: q for q in SPEC["questions"]}
    total = sum(stats["types"].values())
    shares = {t: n / total for t, n in stats["types"].items()}
    print("types", stats["types"], {t: round(v, 3) for t, v in shares.items()})
    assert all(0.2 <= v <= 0.3 for v in shares.values())
    for qtype, counts in stats["answers"].items():
        n = sum(counts.values())
        dev = max(abs(c / n - 1 / len(counts)) for c in counts.values())
        print(qtype, counts, "max deviation from uniform", round(dev, 3))
        assert set(counts) == set(templates[qtype]["answers"])
        assert dev < 0.05


def test_train_and_heldout_seeds_are_disjoint():
    train = set(tv.split_seeds("train", 4500))
    heldout = set(tv.split_seeds("heldout", 500))
    share = len([s for s in range(5000) if tv.split_of(s) == "heldout"]) / 5000
    print("train", len(train), "heldout", len(heldout), "heldout share", share)
    assert not train & heldout
    assert abs(share - SPEC["split"]["heldout_per_mille"] / 1000) < 0.015
    assert all(tv.make_scene(s).split == "heldout" for s in list(heldout)[:20])
    assert tv.split_seeds("heldout", 5, start=100) == tv.split_seeds("heldout", 5, start=100)
    with pytest.raises(MvgptError):
        tv.split_seeds("test", 1)


def test_mp4_reads_back_through_the_runtime(tmp_path):
    scene = tv.make_scene(tv.split_seeds("heldout", 1)[0], edge=0)  # 160x120, 6 s, 10 fps
    path = tv.write_mp4(scene, tmp_path / "toy.mp4")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    count, fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    frames, positions = read_frames(path)
    print("frames", count, "fps", fps, "decoded", frames.shape, "positions", positions)
    assert (count, fps) == (scene.num_frames, scene.fps) == (60, 10)
    assert frames.shape == (16, scene.height, scene.width, 3)
    assert positions == sample_positions(scene.num_frames, scene.fps)
    drawn = tv.render(scene, positions).astype(np.int16)
    diff = np.abs(frames.astype(np.int16) - drawn).mean()
    print("mean abs difference decoded vs drawn", diff)
    assert diff < 4.0
    for frame, index in zip(frames, positions, strict=True):
        obj = scene.objects[-1]  # drawn last: its centre is always visible
        x, y = obj.centre(index, scene.num_frames)
        assert judge(frame[int(round(y)), int(round(x))]) == obj.colour


def test_determinism_across_processes():
    script = (
        "import hashlib, json\n"
        "from mvgpt.models import toy_videos as tv, toy_tokenizer as tt\n"
        "s = tv.make_scene(4242)\n"
        "print(json.dumps(s.to_dict()))\n"
        "print(hashlib.sha256(tv.render(s, [0, s.num_frames - 1]).tobytes()).hexdigest())\n"
        "print(hashlib.sha256(tt.build_tokenizer().to_str().encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    scene = tv.make_scene(4242)
    here = [
        json.dumps(scene.to_dict()),
        hashlib.sha256(tv.render(scene, [0, scene.num_frames - 1]).tobytes()).hexdigest(),
        hashlib.sha256(tt.build_tokenizer().to_str().encode()).hexdigest(),
    ]
    print(out.stdout)
    assert out.stdout.split("\n")[:3] == here
    assert tv.make_scene(4242) == scene and tv.make_scene(4243) != scene


def test_tokenizer_round_trips_and_keeps_answers_whole(tmp_path):
    path = tt.write_tokenizer(tmp_path)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    vocab = tokenizer.get_vocab_size()
    ids = tt.special_token_ids(tokenizer)
    per_answer = {
        w: len(tokenizer.encode(w, add_special_tokens=False).ids) for w in tt.answer_words()
    }
    print("vocab", vocab, "special", ids, "tokens per answer", per_answer)
    assert vocab < 512 and sorted(ids.values()) == [vocab - 3, vocab - 2, vocab - 1]
    assert set(per_answer.values()) == {1}
    for word in tt.answer_words():
        assert len(tokenizer.encode(f" {word}").ids) == 1
        generated = tokenizer.encode(f"{word}<|im_end|>").ids
        assert generated[-1] == ids["<|im_end|>"] and decode_answer(tokenizer, generated) == word
    questions = tt.filled_questions()
    assert len(questions) == 3 + 4 + 12 + 1
    for question in questions:
        encoding = tokenizer.encode(question)
        assert tokenizer.decode(encoding.ids) == question
        assert len(encoding.ids) <= len(question.split()) + 1  # one token a word, plus "?"
        prompt = prompt_ids(tokenizer, question)
        assert (prompt == -200).sum() == 8 and prompt[0] == ids["<|im_start|>"]
    other = "Ünïcode 😀 text"
    assert tokenizer.decode(tokenizer.encode(other).ids) == other
    generation = tt.generation_config(tokenizer)
    assert generation["eos_token_id"][0] == ids["<|im_end|>"]


def test_cli_writes_videos_and_questions(tmp_path, capsys):
    assert tv.main(["--count", "50", "--stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert tv.main(["--out", str(tmp_path), "--count", "2", "--split", "heldout", "--edge"]) == 0
    written = capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "heldout-edge.jsonl").read_text().splitlines()]
    scenes = (tmp_path / "heldout-edge-scenes.jsonl").read_text().splitlines()
    print(stats, written, rows[:2])
    assert stats["types"]["count"] == 50
    assert len(scenes) == 2 and {r["video"] for r in rows} == {
        json.loads(s)["video"] for s in scenes
    }
    for row in rows:
        assert set(row) == {"video", "question", "answer", "question_type", "seed"}
        assert (tmp_path / row["video"]).stat().st_size > 0
        assert tv.split_of(row["seed"]) == "heldout"
    with pytest.raises(SystemExit) as usage:
        tv.main(["--count", "3"])  # no --out
    assert usage.value.code == 2
