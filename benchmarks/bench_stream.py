"""Benchmark live video: a StreamSession fed a 30 fps stream in real time, asked a question every
few seconds, for minutes.

A generator thread draws 640x480 frames (moving shapes; no file, no decoder in the way) and
pushes each at its real time (frame i at start + i / fps); a frame it could not push on time is
counted as late. The session keeps one frame per second, runs clip_vision on it as it arrives and
refreshes the decoder prefix in the background (every --refresh seconds at the earliest). Every
--every seconds the main thread asks --question and measures question -> first token (ttft) with
the prefix that is ready (its age is reported). Peak RSS (ru_maxrss) is read after the first
--rss-early seconds and at the end: a bounded window means they match.

Prints one JSON line per answer, one summary line, and a table.

    python benchmarks/bench_stream.py --model /tmp/pkg05b_int8 --minutes 10 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    default_threads,
    emit,
    environment,
    fmt,
    peak_rss_mib,
    print_table,
)

QUESTION = "What is moving in this video?"


def draw(index: int, fps: float, size: tuple[int, int]) -> np.ndarray:
    """An RGB frame: a disc circling, a square sliding, a background that drifts in colour."""
    width, height = size
    t = index / fps
    frame = np.empty((height, width, 3), np.uint8)
    frame[...] = (40 + int(20 * np.sin(t / 7)), 50, 70)
    cx = int(width * (0.5 + 0.3 * np.cos(t)))
    cy = int(height * (0.5 + 0.3 * np.sin(t)))
    cv2.circle(frame, (cx, cy), height // 8, (250, 200, 40), -1)
    side = height // 6
    x = int((width - side) * ((t / 10) % 1.0))
    cv2.rectangle(frame, (x, height - 2 * side), (x + side, height - side), (60, 80, 220), -1)
    return frame


class Player(threading.Thread):
    """Pushes frame i at start + i / fps until stopped."""

    def __init__(self, session, fps: float, size: tuple[int, int]) -> None:
        super().__init__(daemon=True)
        self.session, self.fps, self.size = session, fps, size
        self.frames = 0
        self.late = 0  # pushed more than one frame interval after its time
        self.push_seconds: list[float] = []
        self.start_time = 0.0
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        self.start_time = time.perf_counter()
        try:
            while not self.stopped.is_set():
                due = self.start_time + self.frames / self.fps
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                elif -wait > 1.0 / self.fps:
                    self.late += 1
                frame = draw(self.frames, self.fps, self.size)
                t0 = time.perf_counter()
                self.session.push(frame, self.frames / self.fps)
                self.push_seconds.append(time.perf_counter() - t0)
                self.frames += 1
        except BaseException as e:
            self.error = e

    def stream_time(self) -> float:
        return time.perf_counter() - self.start_time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="package folder")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between questions")
    parser.add_argument("--refresh", type=float, default=2.0, help="prefix refresh period")
    parser.add_argument("--rss-early", type=float, default=60.0, help="first RSS reading (s)")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args(argv)

    import onnxruntime

    from mvgpt.runtime import Pipeline
    from mvgpt.runtime.stream import StreamSession

    width, height = (int(v) for v in args.size.lower().split("x"))
    env = environment(args.threads, {"onnxruntime": onnxruntime.__version__})
    pipeline = Pipeline.load(args.model, threads=args.threads)
    session = StreamSession(pipeline, refresh_s=args.refresh)
    player = Player(session, args.fps, (width, height))
    player.start()
    duration = args.minutes * 60
    rss_early = None
    answers = []
    next_question = args.every
    try:
        while player.stream_time() < duration:
            now = player.stream_time()
            if rss_early is None and now >= args.rss_early:
                rss_early = peak_rss_mib()
            if now < next_question or not session.window_frames():
                time.sleep(0.01)
                continue
            next_question = now + args.every  # a slow answer delays, never bunches, the next
            live = session.answer(args.question, max_new_tokens=args.max_new_tokens)
            row = {
                "bench": "stream",
                "stream_time_s": round(now, 3),
                "ttft_s": round(live.answer.ttft_s, 4),
                "prefix_age_s": round(live.prefix_age_s, 3),
                "window": [round(t, 3) for t in live.window],
                "answer_tokens": len(live.answer.token_ids),
                "decode_tokens_per_s": live.answer.decode_tokens_per_s,
                "peak_rss_mib": round(peak_rss_mib(), 1),
            }
            answers.append(row)
            emit({**row, **env})
    finally:
        player.stopped.set()
        player.join(timeout=10)
        session.close()
    if player.error is not None:
        raise player.error
    refresh = session.refresh_seconds
    ttfts = [a["ttft_s"] for a in answers]
    ages = [a["prefix_age_s"] for a in answers]
    summary = {
        "bench": "stream_summary",
        "model": str(args.model),
        "minutes": args.minutes,
        "fps": args.fps,
        "size": [width, height],
        "frames": player.frames,
        "frames_late": player.late,
        "kept": session.kept,
        "kept_dropped": session.dropped,
        "questions": len(answers),
        "ttft_s_median": statistics.median(ttfts) if ttfts else None,
        "ttft_s_max": max(ttfts) if ttfts else None,
        "prefix_age_s_median": statistics.median(ages) if ages else None,
        "refreshes": len(refresh),
        "refresh_s_median": statistics.median(refresh) if refresh else None,
        "push_ms_max": round(1000 * max(player.push_seconds), 3) if player.push_seconds else None,
        "peak_rss_mib_early": rss_early,
        "peak_rss_mib_end": round(peak_rss_mib(), 1),
        **env,
    }
    emit(summary)
    early, end = summary["peak_rss_mib_early"], summary["peak_rss_mib_end"]
    print_table(
        [("measure", 34), ("value", 14)],
        [
            ["stream", f"{args.minutes:g} min, {args.fps:g} fps, {width}x{height}"],
            ["frames pushed / late", f"{player.frames} / {player.late}"],
            ["kept (1 fps) / dropped", f"{session.kept} / {session.dropped}"],
            ["questions", str(len(answers))],
            ["ttft median / max (s)", f"{fmt(summary['ttft_s_median'], '.3f')} / "
                                      f"{fmt(summary['ttft_s_max'], '.3f')}"],
            ["prefix age median (s)", fmt(summary["prefix_age_s_median"], ".2f")],
            ["prefix refresh median (s)", fmt(summary["refresh_s_median"], ".2f")],
            ["refreshes", str(len(refresh))],
            ["peak RSS early / end (MiB)", f"{fmt(early, '.0f')} / {fmt(end, '.0f')}"],
        ],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
