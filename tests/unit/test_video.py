"""Frame sampling (hand-computed cases) and OpenCV decoding of generated videos."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from mvgpt.runtime.errors import VideoError
from mvgpt.runtime.video import pad_positions, read_frames, sample_positions
from tests.videos import can_write, make_video, read_frame_index, set_mp4_rotation

# ---------------------------------------------------------------- sampling positions


def test_long_video_thins_1fps_positions_with_linspace():
    # 120 s at 30 fps: 120 positions at 1 fps, linspace(0, 119, 16) truncated
    picks = [0, 7, 15, 23, 31, 39, 47, 55, 63, 71, 79, 87, 95, 103, 111, 119]
    assert sample_positions(3600, 30.0) == [30 * p for p in picks]


def test_short_video_spreads_16_positions():
    # 4 s at 10 fps: only 4 positions at 1 fps -> stride (40 - 1) // 15 = 2
    assert sample_positions(40, 10.0) == list(range(0, 31, 2))
    # 2 s at 10 fps: stride 19 // 15 = 1
    assert sample_positions(20, 10.0) == list(range(16))


def test_exactly_16_positions_are_kept():
    assert sample_positions(160, 10.0) == list(range(0, 160, 10))
    assert sample_positions(16, 1.0) == list(range(16))


def test_fewer_frames_than_16_gives_all_frames():
    assert sample_positions(10, 25.0) == list(range(10))
    assert sample_positions(1, 25.0) == [0]


def test_fps_rounding_and_fallback():
    assert sample_positions(3600, 29.97) == sample_positions(3600, 30.0)
    assert sample_positions(900, 0.0) == sample_positions(900, 30.0)
    assert sample_positions(900, float("nan")) == sample_positions(900, 30.0)
    assert sample_positions(900, 0.2) == sample_positions(900, 1.0)  # stride at least 1


def test_sampling_rejects_an_empty_video():
    with pytest.raises(VideoError):
        sample_positions(0, 30.0)


def test_pad_positions_repeats_in_time_order():
    assert pad_positions(list(range(10)), 16) == [0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 6, 7, 8, 8, 9]
    assert pad_positions([0], 16) == [0] * 16
    assert pad_positions(list(range(16)), 16) == list(range(16))


# ---------------------------------------------------------------- decoding


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return tmp_path_factory.mktemp("videos")


def check_frames(frames, positions, height, width):
    assert frames.dtype == np.uint8
    assert frames.shape == (16, height, width, 3)
    assert [read_frame_index(f) for f in frames] == positions


def test_two_second_clip_is_rgb_and_exact(videos):
    path = make_video(videos / "clip.mp4", seconds=2, fps=10)
    frames, positions = read_frames(path)
    assert positions == list(range(16))
    check_frames(frames, positions, 240, 320)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    ok, first = capture.read()
    capture.release()
    assert ok
    np.testing.assert_array_equal(frames[0], first[:, :, ::-1])  # BGR -> RGB


def test_short_four_second_clip_positions(videos):
    path = make_video(videos / "four.mp4", seconds=4, fps=10)
    frames, positions = read_frames(path)
    assert positions == list(range(0, 31, 2))
    check_frames(frames, positions, 240, 320)


def test_portrait_video(videos):
    path = make_video(videos / "portrait.mp4", seconds=2, fps=10, size=(240, 320))
    frames, positions = read_frames(path)
    check_frames(frames, positions, 320, 240)


def test_rotation_metadata_is_applied(videos):
    # landscape pixels tagged "rotate 90" (how phones store portrait): must come out portrait
    path = set_mp4_rotation(make_video(videos / "rotated.mp4", seconds=2, fps=10), 90)
    frames, positions = read_frames(path)
    assert frames.shape == (16, 320, 240, 3)
    assert [read_frame_index(np.rot90(f, 1)) for f in frames] == positions


def test_4k_one_second(videos):
    path = make_video(videos / "uhd.mp4", seconds=1, fps=10, size=(3840, 2160))
    frames, positions = read_frames(path)
    assert positions == pad_positions(list(range(10)), 16)
    check_frames(frames, positions, 2160, 3840)


def test_single_frame_video_is_repeated(videos):
    path = make_video(videos / "one.mp4", num_frames=1, fps=10)
    frames, positions = read_frames(path)
    assert positions == [0] * 16
    check_frames(frames, positions, 240, 320)
    assert all(np.array_equal(f, frames[0]) for f in frames)


@pytest.mark.parametrize(
    "name, codec", [("clip.avi", "MJPG"), ("clip.webm", "VP80"), ("clip9.webm", "VP90")]
)
def test_other_containers(videos, name, codec):
    if not can_write(codec, Path(name).suffix, videos):
        pytest.skip(f"this OpenCV build cannot write {codec} into {Path(name).suffix}")
    path = make_video(videos / name, seconds=3, fps=10, size=(160, 120), codec=codec)
    frames, positions = read_frames(path)
    assert positions == list(range(16))  # 3 s at 10 fps: stride 29 // 15 = 1
    check_frames(frames, positions, 120, 160)


def test_path_with_spaces_and_non_ascii(videos):
    folder = videos / "mes vidéos"
    folder.mkdir()
    path = make_video(folder / "été à Zürich 日本.mp4", seconds=2, fps=10, size=(160, 120))
    frames, positions = read_frames(path)
    check_frames(frames, positions, 120, 160)


def test_seeking_gives_the_same_frames_as_grabbing(videos):
    path = make_video(videos / "long.mp4", seconds=60, fps=30, size=(160, 120))
    sought, positions = read_frames(path)
    grabbed, positions2 = read_frames(path, seek_min_gap=None)
    assert positions == positions2 == sample_positions(1800, 30.0)
    check_frames(sought, positions, 120, 160)
    np.testing.assert_array_equal(sought, grabbed)


def test_overstated_frame_count_is_resampled(videos):
    # a truncated AVI keeps its header's frame count (60) but only ~36 frames decode
    full = make_video(videos / "whole.avi", seconds=6, fps=10, size=(160, 120), codec="MJPG")
    data = full.read_bytes()
    path = videos / "cut.avi"
    path.write_bytes(data[: len(data) * 6 // 10])
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    reported = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    capture.release()
    frames, positions = read_frames(path)
    real = max(positions) + 1
    print("reported", reported, "sampled up to", real)
    assert reported == 60 and real < 60
    check_frames(frames, positions, 120, 160)


# ---------------------------------------------------------------- bad inputs


def one_line_error(path, match):
    with pytest.raises(VideoError, match=match) as info:
        read_frames(path)
    assert "\n" not in str(info.value)


def test_missing_file(videos):
    one_line_error(videos / "nope.mp4", "not found")


def test_folder(videos):
    one_line_error(videos, "folder")


def test_zero_byte_file(videos):
    path = videos / "empty.mp4"
    path.write_bytes(b"")
    one_line_error(path, "empty")


def test_text_file_renamed_mp4(videos):
    path = videos / "notes.mp4"
    path.write_text("these are my notes, not a video\n" * 50)
    one_line_error(path, "cannot open")


def test_truncated_mp4(videos):
    data = make_video(videos / "tail.mp4", seconds=4, fps=10).read_bytes()
    path = videos / "tail_cut.mp4"
    path.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: it is lost
    one_line_error(path, "cannot open")


def test_no_decodable_frames(videos):
    path = videos / "noframes.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    writer.release()  # a valid AVI header without a single frame
    one_line_error(path, "no decodable frames")
