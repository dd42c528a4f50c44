"""Training examples of the toy task (issue 16): a seed -> the 16 frames the runtime would read
from that scene's mp4, as the uint8 224x224 pixels of both streams, plus the scene's questions.

The path is the runtime's own, with two shortcuts that give the same pixels:

- Only the sampled frames are drawn and encoded. ``runtime.video``'s sampling (``sample_positions``
  and ``pad_positions`` on the scene's frame count and fps) picks the 16 frame indices; those
  frames are written as a 16-frame mp4 with the task's writer settings (cv2.VideoWriter, mp4v)
  and read back with ``runtime.video.read_frames``, so they carry the codec's chroma subsampling
  and quantization. Against the same frames taken out of the whole mp4, the mean absolute
  difference is 0.0-0.2 of 255 (the codec's own error against the drawing is about 2.0-2.5;
  tests/unit/test_toy_model.py measures both).
- Both streams are resized by the runtime's own functions (the toy CLIP processor squashes the
  whole frame to 224x224 with ``runtime.preprocess.resize_bicubic_pil``, VideoMamba's with
  cv2.resize), once per frame, and kept as uint8.

Both streams are kept as uint8 after resizing: ``tensors`` then runs the runtime's
``preprocess_clip`` and ``preprocess_video_mamba`` on them (a 224x224 frame passes their resize
unchanged), which gives the very float32 inputs the runtime computes from the full frames.

Each example also carries dense training targets from the renderer (``patch_objects``): for every
16x16 patch of both streams' 224x224 frames, which object covers most of it (0: background),
after the same resize and crop as the pixels. Training uses them for auxiliary losses only.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mvgpt.models import toy_videos as tv
from mvgpt.runtime.errors import MvgptError
from mvgpt.runtime.preprocess import (
    preprocess_clip,
    preprocess_video_mamba,
    resize_bicubic_pil,
)
from mvgpt.runtime.video import pad_positions, read_frames, sample_positions

NUM_FRAMES = 16  # the runtime's sampling (manifest sampling.num_frames)
SIZE = 224  # both streams' input size (manifest preprocess.*.size)
PATCH = 16  # both towers' patch size


@dataclass
class Example:
    """One scene as the model sees it: uint8 (16, 224, 224, 3) per stream, its questions, and
    per patch the object covering it (uint8 (16, 14, 14) per stream, 0 background, k for
    ``objects[k - 1]``)."""

    seed: int
    clip: np.ndarray  # after the CLIP resize and crop, before normalization
    mamba: np.ndarray  # after the VideoMamba squash resize, before normalization
    questions: list[tv.Question]
    edge: int | None = None
    objects: tuple[tv.ToyObject, ...] = ()
    clip_cover: np.ndarray | None = None  # (16, 14, 14, 13) class coverage per 16 px patch
    mamba_cover: np.ndarray | None = None  # (16, 7, 7, 13) class coverage per 32 px patch


def sampled_positions(scene: tv.Scene) -> list[int]:
    """The frame indices ``read_frames`` takes from the scene's full mp4."""
    positions = sample_positions(scene.num_frames, float(scene.fps), NUM_FRAMES)
    return pad_positions(positions, NUM_FRAMES)


def through_codec(frames: np.ndarray, fps: int, folder: Path) -> np.ndarray:
    """RGB frames -> a short mp4 with the task's writer -> ``read_frames`` (RGB uint8)."""
    container = tv.load_spec()["container"]
    path = folder / f"frames{container['suffix']}"
    height, width = frames.shape[1:3]
    fourcc = cv2.VideoWriter_fourcc(*container["fourcc"])
    writer = cv2.VideoWriter(str(path), fourcc, float(fps), (width, height))
    if not writer.isOpened():
        raise MvgptError(
            f"toy data: expected cv2.VideoWriter to open {container['fourcc']} in {path}, got a "
            "closed writer; fix: use an OpenCV build with FFmpeg"
        )
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
    finally:
        writer.release()
    decoded, positions = read_frames(path, len(frames))
    if positions != list(range(len(frames))):
        raise MvgptError(
            f"toy data: expected read_frames to return all {len(frames)} frames of {path}, got "
            f"positions {positions}; fix: check the OpenCV build's mp4 support"
        )
    return decoded


def clip_pixels(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) -> (F, 224, 224, 3): the toy CLIP stream's resize, the runtime's own
    ``resize_bicubic_pil`` straight to 224x224 (the toy checkpoint's processor has
    ``do_center_crop`` off and a square ``size``: the whole frame is seen)."""
    return np.stack([resize_bicubic_pil(frame, SIZE, SIZE) for frame in frames])


def mamba_pixels(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) -> (F, 224, 224, 3): the VideoMamba stream's cv2 squash resize."""
    return np.stack([cv2.resize(frame, (SIZE, SIZE)) for frame in frames])


SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
DIRECTIONS = ("still", "left", "right", "up", "down")
NUM_CLASSES = 1 + len(COLOURS) * len(SHAPES)  # 0 background, then colour-major (colour, shape)
MAMBA_PATCH = 32  # the toy VideoMamba's patch size (7x7 patches per frame)


def class_of(obj: tv.ToyObject) -> int:
    """1 + colour index * 3 + shape index (0 is the background)."""
    return 1 + COLOURS.index(obj.colour) * len(SHAPES) + SHAPES.index(obj.shape)


def class_coverage(scene: tv.Scene, positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per patch and class, the fraction of the patch that class covers (after occlusion), for
    the CLIP stream's 16 px patches (F, 14, 14, 13) and VideoMamba's 32 px patches (F, 7, 7, 13),
    after each stream's resize (and crop); class 0 is the uncovered rest."""
    labelled = tuple(
        dataclasses.replace(obj, rgb=(k, k, k)) for k, obj in enumerate(scene.objects, 1)
    )
    ids = tv.render(dataclasses.replace(scene, background=(0, 0, 0), objects=labelled), positions)
    ids = ids[..., 0]  # (F, H, W), object k drawn in grey level k, occlusion as in the video
    out = []
    for size, (y, x), cell in (
        ((SIZE, SIZE), (0, 0), PATCH),
        ((SIZE, SIZE), (0, 0), MAMBA_PATCH),
    ):
        n = SIZE // cell
        cover = np.zeros((len(positions), n, n, NUM_CLASSES), np.float32)
        for k, obj in enumerate(scene.objects, 1):
            for f, frame in enumerate(ids):
                mask = (frame == k).astype(np.float32)
                mask = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)[
                    y : y + SIZE, x : x + SIZE
                ]
                cover[f, :, :, class_of(obj)] = mask.reshape(n, cell, n, cell).mean(axis=(1, 3))
        cover[..., 0] = np.clip(1.0 - cover[..., 1:].sum(-1), 0.0, 1.0)
        out.append(cover)
    return out[0], out[1]


def make_example(seed: int, edge: int | None = None) -> Example:
    """The seed's scene as the model sees it (``edge``: toy_videos' edge settings)."""
    scene = tv.make_scene(seed, edge=edge)
    positions = sampled_positions(scene)
    frames = tv.render(scene, positions)
    with tempfile.TemporaryDirectory(prefix="mvgpt-toy-") as tmp:
        frames = through_codec(frames, scene.fps, Path(tmp))
    clip_cover, mamba_cover = class_coverage(scene, positions)
    return Example(
        seed,
        clip_pixels(frames),
        mamba_pixels(frames),
        tv.questions(scene),
        edge,
        scene.objects,
        clip_cover,
        mamba_cover,
    )


def example_from_video(path: str | Path, seed: int = -1) -> Example:
    """An Example from an mp4 file through ``read_frames`` (questions left empty)."""
    frames, _ = read_frames(path, NUM_FRAMES)
    return Example(seed, clip_pixels(frames), mamba_pixels(frames), [])


def tensors(examples: list[Example]) -> tuple[np.ndarray, np.ndarray]:
    """The runtime's float32 model inputs: (V, 16, 3, 224, 224) for CLIP and for VideoMamba."""
    clip = np.stack([preprocess_clip(e.clip) for e in examples])
    mamba = np.stack([preprocess_video_mamba(e.mamba) for e in examples])
    return clip, mamba


class Dataset:
    """Examples stored as arrays in one folder (uint8 pixels as memory-mapped .npy files, so
    that several training processes share one copy through the page cache)."""

    FIELDS = ("clip", "mamba", "clip_cover", "mamba_cover")

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.arrays = {
            name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in self.FIELDS
        }
        meta = np.load(self.folder / "meta.npz", allow_pickle=False)
        self.seeds = meta["seeds"].tolist()
        self.questions = [
            [tv.Question(*q.split("\t")) for q in row.split("\n") if q]
            for row in meta["questions"].tolist()
        ]
        self.directions = meta["directions"]  # (N, 13) direction index per class, -1 absent

    def __len__(self) -> int:
        return len(self.seeds)


def _directions(objects: tuple[tv.ToyObject, ...]) -> np.ndarray:
    out = np.full(NUM_CLASSES, -1, np.int64)
    for obj in objects:
        out[class_of(obj)] = DIRECTIONS.index(obj.direction)
    return out


def build_dataset(seeds: list[int], folder: str | Path, processes: int = 2) -> Dataset:
    """Make the examples of ``seeds`` (in worker processes) and store them in ``folder``."""
    from multiprocessing import Pool

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = {
        "clip": ((NUM_FRAMES, SIZE, SIZE, 3), np.uint8),
        "mamba": ((NUM_FRAMES, SIZE, SIZE, 3), np.uint8),
        "clip_cover": ((NUM_FRAMES, SIZE // PATCH, SIZE // PATCH, NUM_CLASSES), np.float16),
        "mamba_cover": (
            (NUM_FRAMES, SIZE // MAMBA_PATCH, SIZE // MAMBA_PATCH, NUM_CLASSES),
            np.float16,
        ),
    }
    arrays = {
        name: np.lib.format.open_memmap(
            folder / f"{name}.npy", mode="w+", dtype=dtype, shape=(len(seeds), *shape)
        )
        for name, (shape, dtype) in shapes.items()
    }
    questions, directions = [], []
    with Pool(processes) as pool:
        for i, example in enumerate(pool.imap(make_example, seeds, chunksize=4)):
            arrays["clip"][i] = example.clip
            arrays["mamba"][i] = example.mamba
            arrays["clip_cover"][i] = example.clip_cover
            arrays["mamba_cover"][i] = example.mamba_cover
            questions.append(
                "\n".join(f"{q.type}\t{q.question}\t{q.answer}" for q in example.questions)
            )
            directions.append(_directions(example.objects))
    for array in arrays.values():
        array.flush()
    np.savez(
        folder / "meta.npz",
        seeds=np.asarray(seeds, np.int64),
        questions=np.asarray(questions),
        directions=np.stack(directions),
    )
    return Dataset(folder)
