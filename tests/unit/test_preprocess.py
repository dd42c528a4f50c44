"""Pixel preprocessing: PIL-exact bicubic, the CLIP processor, the VideoMamba squash."""

import cv2
import numpy as np
import pytest

from mvgpt.runtime.errors import MvgptError
from mvgpt.runtime.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    clip_resize_shape,
    preprocess_clip,
    preprocess_video_mamba,
    resize_bicubic_pil,
)


def random_frames(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_resize_output_shape_follows_transformers():
    assert clip_resize_shape(2160, 3840) == (224, 398)  # int(224 * 3840 / 2160) = int(398.2)
    assert clip_resize_shape(320, 240) == (298, 224)
    assert clip_resize_shape(100, 100) == (224, 224)
    assert clip_resize_shape(224, 400) == (224, 400)


SIZES = [
    ((240, 320), (224, 298)),  # small downscale
    ((1080, 1920), (224, 398)),  # 4.8x downscale: wide antialiasing support
    ((37, 53), (11, 17)),  # odd sizes
    ((48, 64), (224, 298)),  # upscale
    ((7, 9), (30, 31)),  # strong upscale
    ((100, 100), (100, 50)),  # one axis unchanged
]


@pytest.mark.parametrize("in_size, out_size", SIZES)
def test_bicubic_matches_pil(in_size, out_size):
    image_module = pytest.importorskip("PIL.Image")
    image = random_frames((*in_size, 3), seed=sum(in_size))
    height, width = out_size
    ref = np.asarray(image_module.fromarray(image).resize((width, height), image_module.BICUBIC))
    ours = resize_bicubic_pil(image, width, height)
    diff = np.abs(ref.astype(int) - ours.astype(int)).max()
    print(f"{in_size} -> {out_size}: max |PIL - ours| = {diff} uint8 levels")
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    assert diff == 0


def test_bicubic_crop_equals_crop_of_full_resize():
    image = random_frames((90, 160, 3), seed=3)
    full = resize_bicubic_pil(image, 298, 168)
    part = resize_bicubic_pil(image, 298, 168, crop=(5, 37, 150, 224))
    np.testing.assert_array_equal(part, full[5:155, 37:261])


def test_bicubic_differs_from_cv2_cubic_on_downscale():
    # guards against a silent swap to cv2.INTER_CUBIC, which does not antialias
    image = random_frames((480, 640, 3), seed=4)
    ours = resize_bicubic_pil(image, 298, 224).astype(int)
    cv = cv2.resize(image, (298, 224), interpolation=cv2.INTER_CUBIC).astype(int)
    assert np.abs(ours - cv).max() > 20


def clip_processor(center_crop: bool = True):
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    except ImportError:
        try:
            from transformers import CLIPImageProcessor as CLIPImageProcessorPil
        except ImportError:
            pytest.skip("transformers is not installed")
    pytest.importorskip("PIL")
    return CLIPImageProcessorPil(
        size={"shortest_edge": 224} if center_crop else {"height": 224, "width": 224},
        crop_size={"height": 224, "width": 224},
        do_resize=True,
        resample=3,
        do_center_crop=center_crop,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


@pytest.mark.parametrize("height, width", [(240, 320), (320, 240), (225, 401), (1080, 1920)])
def test_preprocess_clip_matches_transformers(height, width):
    processor = clip_processor()
    frames = random_frames((2, height, width, 3), seed=height)
    ref = processor(list(frames), return_tensors="np")["pixel_values"]
    ours = preprocess_clip(frames)
    diff = np.abs(ref - ours).max()
    print(f"({height}, {width}): max |transformers - ours| = {diff}")
    assert ours.shape == (2, 3, 224, 224) and ours.dtype == np.float32
    assert diff <= 1e-6


@pytest.mark.parametrize("height, width", [(240, 320), (120, 160), (480, 640)])
def test_preprocess_clip_squash_matches_transformers(height, width):
    # the toy checkpoint's processor: do_center_crop false, size 224x224 (the whole frame).
    # Landscape frames only: Pillow >= 13 runs the vertical pass first when the height shrinks
    # much more than the width (a tall frame squashed to a square), which moves pixels by up to
    # ~25 levels; resize_bicubic_pil keeps the horizontal-first order of earlier Pillows
    processor = clip_processor(center_crop=False)
    frames = random_frames((2, height, width, 3), seed=height + width)
    ref = processor(list(frames), return_tensors="np")["pixel_values"]
    ours = preprocess_clip(frames, center_crop=False)
    diff = np.abs(ref - ours).max()
    print(f"({height}, {width}) squashed: max |transformers - ours| = {diff}")
    assert ours.shape == (2, 3, 224, 224) and ours.dtype == np.float32
    assert diff <= 1e-6
    assert np.abs(ours - preprocess_clip(frames)).max() > 0.1  # the crop would differ


def test_preprocess_clip_normalization_by_hand():
    # a uniform frame stays uniform through resize and crop
    frames = np.full((1, 300, 400, 3), (10, 128, 250), np.uint8)
    out = preprocess_clip(frames)
    expected = (np.array([10, 128, 250]) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(out[0, :, 100, 100], expected, atol=1e-6)
    assert np.ptp(out[0], axis=(1, 2)).max() == 0


def test_preprocess_video_mamba_is_a_bilinear_squash():
    frames = random_frames((3, 120, 300, 3), seed=5)
    out = preprocess_video_mamba(frames)
    assert out.shape == (3, 3, 224, 224) and out.dtype == np.float32
    squashed = cv2.resize(frames[1], (224, 224), interpolation=cv2.INTER_LINEAR)
    expected = (squashed / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    diff = np.abs(out[1] - expected.transpose(2, 0, 1)).max()
    print("max |expected - ours| =", diff)
    assert diff < 1e-6


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), np.uint8),  # no frame axis
        np.zeros((1, 4, 4, 4), np.uint8),  # RGBA
        np.zeros((1, 4, 4, 3), np.float32),  # already scaled
        np.zeros((0, 4, 4, 3), np.uint8),  # no frames
    ],
)
def test_bad_frames_raise_one_line(bad):
    for fn in (preprocess_clip, preprocess_video_mamba):
        with pytest.raises(MvgptError) as info:
            fn(bad)
        assert "\n" not in str(info.value)
