"""Per-stream pixel preprocessing: RGB uint8 frames -> normalized float32 (F, 3, size, size).

- CLIP stream (`preprocess_clip`): the semantics of HF `CLIPImageProcessor` as the reference
  ran it (PIL backend): shortest side to `size` with PIL's BICUBIC, long side int(size * long /
  short), center crop, /255, CLIP mean/std. The bicubic resample is a numpy re-implementation of
  PIL's 8-bit algorithm (not cv2.INTER_CUBIC, which neither antialiases on downscale nor rounds
  the same way): filter support widened by the downscale factor, coefficients normalized per
  output pixel and quantized to 22-bit fixed point, horizontal pass then vertical pass, each
  rounded and clipped to uint8. The sums are exact integers in float64, so a banded BLAS matmul
  per axis reproduces PIL bit for bit; only the output pixels inside the crop are computed.
- VideoMamba stream (`preprocess_video_mamba`): cv2.resize to size x size (bilinear, aspect
  ratio not kept), /255, ImageNet mean/std.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from .errors import MvgptError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PRECISION_BITS = 22  # PIL's fixed point for 8-bit images: 32 - 8 - 2
_BICUBIC_SUPPORT = 2.0
_BLOCK = 32  # output pixels per banded matmul block
_ROW_CHUNK = 1 << 21  # input values per horizontal-pass chunk (bounds the float64 copy to 16 MB)


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5 (PIL's BICUBIC)."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=32)
def _weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's fixed-point bicubic coefficients as a dense (out_size, in_size) float64 matrix of
    integers, and each output pixel's [first, last) input range, (out_size, 2) int."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filter_scale
    centers = (np.arange(out_size) + 0.5) * scale
    # PIL truncates (center -/+ support + 0.5) toward zero; both are >= 0 before clamping here
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    last = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    taps = int(math.ceil(support)) * 2 + 1
    offsets = first[:, None] + np.arange(taps)[None, :]  # (out, taps) input index of each tap
    valid = offsets < last[:, None]
    w = _bicubic((offsets - centers[:, None] + 0.5) / filter_scale) * valid
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    fixed = w * (1 << _PRECISION_BITS)
    fixed = np.where(fixed < 0, np.trunc(fixed - 0.5), np.trunc(fixed + 0.5))  # half away from 0
    matrix = np.zeros((out_size, in_size))
    rows = np.broadcast_to(np.arange(out_size)[:, None], offsets.shape)
    matrix[rows[valid], offsets[valid]] = fixed[valid]
    matrix.setflags(write=False)
    bounds = np.stack([first, last], axis=1)
    bounds.setflags(write=False)
    return matrix, bounds


def _resample_rows(x: np.ndarray, matrix: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Resample the last axis of `x` (N, in) uint8 with `matrix` rows -> (N, out) uint8."""
    out_size = matrix.shape[0]
    out = np.empty((x.shape[0], out_size), np.uint8)
    step = max(1, _ROW_CHUNK // max(1, x.shape[1]))
    for r0 in range(0, x.shape[0], step):
        xf = x[r0 : r0 + step].astype(np.float64)
        acc = np.empty((xf.shape[0], out_size))
        for o0 in range(0, out_size, _BLOCK):
            o1 = min(o0 + _BLOCK, out_size)
            c0, c1 = int(bounds[o0:o1, 0].min()), int(bounds[o0:o1, 1].max())
            acc[:, o0:o1] = xf[:, c0:c1] @ matrix[o0:o1, c0:c1].T
        # PIL: start the sum at 2^21, shift right by 22 (floor), clip to 0..255
        acc += float(1 << (_PRECISION_BITS - 1))
        acc *= 1.0 / (1 << _PRECISION_BITS)
        np.floor(acc, out=acc)
        np.clip(acc, 0, 255, out=acc)
        out[r0 : r0 + step] = acc
    return out


def resize_bicubic_pil(
    image: np.ndarray, width: int, height: int, crop: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """PIL-exact `Image.resize((width, height), BICUBIC)` of an (H, W, C) uint8 array.

    Horizontal pass first, as Pillow does for the CLIP crop's shortest-side resize; Pillow >= 13
    runs the vertical pass first when the height shrinks much more than the width (tall frames
    squashed to a square), up to ~25 levels apart.

    `crop` = (top, left, crop_height, crop_width) in the resized image: only those output pixels
    are computed (the same values PIL gives before cropping).
    """
    in_h, in_w, channels = image.shape
    top, left, crop_h, crop_w = crop if crop is not None else (0, 0, height, width)
    out = image
    if width != in_w:  # horizontal pass first, as PIL does
        matrix, bounds = _weights(in_w, width)
        rows = np.ascontiguousarray(out.transpose(0, 2, 1)).reshape(in_h * channels, in_w)
        sel = slice(left, left + crop_w)
        res = _resample_rows(rows, matrix[sel], bounds[sel])  # (H*C, crop_w)
        out = res.reshape(in_h, channels, crop_w).transpose(0, 2, 1)
    else:
        out = out[:, left : left + crop_w]
    if height != in_h:
        matrix, bounds = _weights(in_h, height)
        cols = np.ascontiguousarray(out.transpose(1, 2, 0)).reshape(crop_w * channels, in_h)
        sel = slice(top, top + crop_h)
        res = _resample_rows(cols, matrix[sel], bounds[sel])  # (crop_w*C, crop_h)
        out = res.reshape(crop_w, channels, crop_h).transpose(2, 0, 1)
    else:
        out = out[top : top + crop_h]
    return np.ascontiguousarray(out)


def clip_resize_shape(height: int, width: int, size: int = 224) -> tuple[int, int]:
    """(height, width) after resizing the shortest side to `size`, as transformers computes it:
    the long side becomes int(size * long / short)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        got = getattr(frames, "shape", type(frames).__name__)
        raise MvgptError(
            f"preprocess: expected frames of shape (F, H, W, 3), got {got}; "
            "fix: pass the array read_frames returns"
        )
    if frames.dtype != np.uint8:
        raise MvgptError(
            f"preprocess: expected uint8 RGB frames, got dtype {frames.dtype}; "
            "fix: pass undecoded 0..255 pixels (the array read_frames returns)"
        )
    if frames.shape[0] == 0 or min(frames.shape[1:3]) == 0:
        raise MvgptError(
            f"preprocess: expected at least one non-empty frame, got shape {frames.shape}; "
            "fix: check the video decoded"
        )


def _normalize(pixels: np.ndarray, mean: tuple, std: tuple) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, 3, H, W) float32 as transformers does it: rescale in float64,
    cast to float32, then (x - mean) / std in float32."""
    x = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess_clip(
    frames: np.ndarray,
    size: int = 224,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
    center_crop: bool = True,
) -> np.ndarray:
    """CLIP pixel_values: (F, H, W, 3) uint8 RGB -> (F, 3, size, size) float32.

    Shortest side to `size` (PIL bicubic), center crop size x size with transformers' offsets
    ((new - size) // 2), /255, normalize. With ``center_crop`` off (a processor with
    ``do_center_crop`` false and a square ``size``), the whole frame is resized to size x size.
    """
    _check_frames(frames)
    height, width = frames.shape[1:3]
    if center_crop:
        new_h, new_w = clip_resize_shape(height, width, size)
        crop = ((new_h - size) // 2, (new_w - size) // 2, size, size)
    else:
        new_h, new_w, crop = size, size, None
    pixels = np.empty((frames.shape[0], size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        pixels[i] = resize_bicubic_pil(frame, new_w, new_h, crop)
    return _normalize(pixels, mean, std)


def preprocess_video_mamba(
    frames: np.ndarray,
    size: int = 224,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> np.ndarray:
    """VideoMamba pixel values: (F, H, W, 3) uint8 RGB -> (F, 3, size, size) float32.

    cv2.resize to size x size (INTER_LINEAR, the aspect ratio is not kept), then (x / 255 -
    mean) / std computed in float64 like the reference and cast to float32.
    """
    _check_frames(frames)
    pixels = np.stack([cv2.resize(frame, (size, size)) for frame in frames])
    x = (pixels.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).astype(np.float32))
