"""Live video: ``StreamSession`` takes frames as they arrive and answers questions about the last
seconds at any time.

Frames come in with their timestamps (``push``: RGB uint8, any size, from any source: OpenCV,
a camera SDK, the application's own decoder). The model's sampling rule (1 frame per second,
``video.sample_positions``) is applied on a grid of stream time: a frame is *kept* when it is the
first at or after the next whole tick (1 / target_fps seconds apart, counted from the first
frame); every other frame is dropped at once. Each kept frame goes through preprocessing and
clip_vision once, when it arrives; its features and VideoMamba pixels stay while it is in the
window (the last ``window_s`` seconds, default num_frames / target_fps = 16 s), so memory is
bounded by the window, not by how long the stream runs.

The window's kept frames are sampled as ``Pipeline`` samples an array of frames
(``sample_positions(n, 1.0, num_frames)``, then ``pad_positions`` while fewer than num_frames
have arrived), so an answer equals ``Pipeline.answer`` on those frames: same sampled frames, same
tokens (tests/unit/test_stream.py). When the window is full and the stream's frame rate is an
integer, the kept frames are also exactly those ``Pipeline.answer`` samples from the file.

The decoder's question-independent prefix (system prompt + the window's 2402 visual tokens) is
refreshed in the background every ``refresh_s`` seconds (at the earliest when the previous
refresh is done), so that a question pays only for its own tokens and its answer. Work runs in
small steps: the decoder's prefill in chunks of PREFILL_STEP positions under one lock that
questions take first (a question waits at most for the chunk in progress), the vision stages
beside a question (they share the cores with it for a moment). Every ``StreamAnswer`` says which
window it is about (first and last timestamp of its sampled frames) and how old its prefix was.

``background=False`` runs everything in the caller's thread: ``push`` encodes kept frames at once
and ``answer`` refreshes the prefix when the window has new frames (tests, single-threaded apps).
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .decoder import KVCache
from .errors import MvgptError
from .pipeline import ENCODE_STAGES, Answer, Encoding, Pipeline
from .video import pad_positions, sample_positions

DEFAULT_REFRESH_S = 2.0
PREFILL_STEP = 128  # prefix positions per background prefill run: a question waits at most this
MAX_PENDING = 8  # kept frames waiting for clip_vision; beyond this the oldest is dropped


@dataclass(frozen=True)
class KeptFrame:
    """A kept frame after clip_vision: what its window needs of it."""

    index: int  # the frame's number in the stream (0 = first pushed)
    timestamp: float
    features: np.ndarray  # (P, C) CLIP patch features
    mamba_pixels: np.ndarray  # (3, S, S) VideoMamba input


@dataclass(frozen=True)
class _Prefix:
    """The decoder's [prompt prefix, visual] cache of one window."""

    encoding: Encoding
    window: tuple[float, float]  # timestamps of the first and last sampled frame
    timestamps: tuple[float, ...]  # of the num_frames sampled frames
    newest_index: int  # the newest kept frame in the window
    keys: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]
    made_at: float  # perf_counter() when the window was taken
    seconds: MappingProxyType  # ENCODE_STAGES after clip_vision, and "prefix_prefill"


@dataclass(frozen=True)
class StreamAnswer:
    answer: Answer
    encoding: Encoding  # the window's visual embeddings the answer used
    window: tuple[float, float]  # first and last timestamp of the sampled frames (stream seconds)
    frame_timestamps: tuple[float, ...]  # of the num_frames sampled frames
    prefix_age_s: float  # from taking the prefix's window to the question
    prefix_seconds: MappingProxyType  # what that prefix cost: vision stages and its prefill


class _Compute:
    """One lock for all model work; questions go first (background steps wait while one waits)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._questions = 0

    def acquire(self, question: bool) -> None:
        with self._cond:
            if question:
                self._questions += 1
            while self._busy or (not question and self._questions):
                self._cond.wait()
            self._busy = True
            if question:
                self._questions -= 1

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def step(self, question: bool = False) -> Iterator[None]:
        self.acquire(question)
        try:
            yield
        finally:
            self.release()


class StreamSession:
    """Frames in as they arrive, answers about the last ``window_s`` seconds at any time."""

    def __init__(
        self,
        pipeline: Pipeline,
        window_s: float | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
        background: bool = True,
        target_fps: float = 1.0,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.pipeline = pipeline
        self.max_pending = max(1, int(max_pending))
        self.num_frames = int(pipeline.sampling["num_frames"])
        if not (math.isfinite(target_fps) and target_fps > 0):
            raise MvgptError(
                f"stream: expected a positive target_fps, got {target_fps}; fix: pass e.g. 1.0"
            )
        self.period = 1.0 / target_fps
        self.window_s = float(window_s) if window_s is not None else self.num_frames * self.period
        if not (math.isfinite(self.window_s) and self.window_s >= self.period):
            raise MvgptError(
                f"stream window: expected at least {self.period} s (one sampled frame), got "
                f"{window_s}; fix: pass a longer window_s"
            )
        if not (math.isfinite(refresh_s) and refresh_s >= 0):
            raise MvgptError(f"stream refresh: expected seconds >= 0, got {refresh_s}")
        self.refresh_s = float(refresh_s)
        self.background = background
        self._prefix_ids = pipeline.split_prompt(pipeline.prompt_ids("?"))[0]
        self._compute = _Compute()
        self._state = threading.Lock()  # guards the fields below
        self._window: collections.deque[KeptFrame] = collections.deque()
        self._pending: collections.deque[tuple[int, float, np.ndarray]] = collections.deque()
        self._prefix: _Prefix | None = None
        self._pushed = 0
        self._last_timestamp: float | None = None
        self._next_tick: float | None = None
        self.kept = 0
        self.dropped = 0  # kept frames dropped because clip_vision fell behind
        self.refreshes = 0
        self.refresh_seconds: list[float] = []  # wall time of each background refresh
        self._error: BaseException | None = None
        self._wake = threading.Event()
        self._closed = False
        self._last_refresh_start = -math.inf
        self._worker = None
        if background:
            self._worker = threading.Thread(target=self._work, name="mvgpt-stream", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------------ frames in

    def push(self, frame: np.ndarray, timestamp: float) -> bool:
        """Offer one RGB uint8 (H, W, 3) frame taken at ``timestamp`` seconds (increasing).
        Returns True when the sampling rule keeps it."""
        self._raise_worker_error()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] != 3:
            shape = getattr(frame, "shape", None)
            raise MvgptError(
                f"stream frame: expected an (H, W, 3) RGB array, got {type(frame).__name__} "
                f"of shape {shape}; fix: push decoded RGB frames"
            )
        if frame.dtype != np.uint8 or frame.shape[0] < 1 or frame.shape[1] < 1:
            raise MvgptError(
                f"stream frame: expected uint8 pixels and a non-empty frame, got dtype "
                f"{frame.dtype} shape {frame.shape}; fix: convert to uint8 RGB"
            )
        timestamp = float(timestamp)
        with self._state:
            last = self._last_timestamp
            if not math.isfinite(timestamp) or (last is not None and timestamp <= last):
                raise MvgptError(
                    f"stream timestamp: expected a finite time after {last}, got {timestamp}; "
                    "fix: push frames in order with increasing timestamps"
                )
            index = self._pushed
            self._pushed += 1
            self._last_timestamp = timestamp
            if self._next_tick is None:
                self._next_tick = timestamp
            if timestamp < self._next_tick - 1e-6:
                return False
            while self._next_tick <= timestamp + 1e-6:  # the tick this frame takes, then the next
                self._next_tick += self.period
            self.kept += 1
            if self.background:
                if len(self._pending) >= self.max_pending:
                    self._pending.popleft()
                    self.dropped += 1
                self._pending.append((index, timestamp, np.array(frame)))
        if self.background:
            self._wake.set()
        else:
            self._encode_frame(index, timestamp, frame)
        return True

    def _encode_frame(self, index: int, timestamp: float, frame: np.ndarray) -> None:
        """clip_vision on one kept frame; it joins the window, frames older than it leave."""
        # vision runs beside a question (onnxruntime sessions take concurrent runs): a question
        # shares the cores for a moment instead of waiting for a whole vision stage
        clip_pixels, mamba_pixels = self.pipeline.preprocess(frame[None])
        features = self.pipeline.clip_features(clip_pixels)
        kept = KeptFrame(index, timestamp, features[0], mamba_pixels[0])
        with self._state:
            self._window.append(kept)
            while self._window and self._window[0].timestamp < timestamp - self.window_s + 1e-6:
                self._window.popleft()

    # ------------------------------------------------------------------ prefix

    def window_frames(self) -> list[KeptFrame]:
        """The kept frames now in the window, oldest first."""
        with self._state:
            return list(self._window)

    def _sampled(self, window: list[KeptFrame]) -> list[KeptFrame]:
        positions = sample_positions(len(window), 1.0, self.num_frames)
        return [window[p] for p in pad_positions(positions, self.num_frames)]

    def _refresh(self) -> _Prefix | None:
        """Encode the current window and prefill [prompt prefix, visual] in small steps."""
        window = self.window_frames()
        if not window:
            return None
        made_at = time.perf_counter()
        sampled = self._sampled(window)
        features = np.stack([f.features for f in sampled])
        pixels = np.stack([f.mamba_pixels for f in sampled])
        encoding = self.pipeline.encode_features(features, pixels, [f.index for f in sampled], {})
        pipeline = self.pipeline
        embeds = np.concatenate(
            [pipeline._embed(self._prefix_ids), encoding.visual[None]], axis=1
        )  # (1, P, H)
        t0 = time.perf_counter()
        cache = pipeline.decoder.new_cache(embeds.shape[1])
        for start in range(0, embeds.shape[1], PREFILL_STEP):
            with self._compute.step():
                pipeline.decoder.run(embeds[:, start : start + PREFILL_STEP], cache)
            self._encode_pending()  # frames that arrived meanwhile do not wait for the refresh
        seconds = dict(encoding.seconds)
        seconds["prefix_prefill"] = time.perf_counter() - t0
        keys, values = cache.snapshot()
        times = tuple(f.timestamp for f in sampled)
        prefix = _Prefix(
            encoding=encoding,
            window=(times[0], times[-1]),
            timestamps=times,
            newest_index=window[-1].index,
            keys=keys,
            values=values,
            made_at=made_at,
            seconds=MappingProxyType(seconds),
        )
        with self._state:
            self._prefix = prefix
            self.refreshes += 1
        return prefix

    def _stale(self) -> bool:
        with self._state:
            prefix, window = self._prefix, self._window
            return bool(window) and (prefix is None or prefix.newest_index != window[-1].index)

    def refresh(self) -> None:
        """Refresh the prefix now (the background does it every ``refresh_s`` by itself)."""
        self._refresh()

    # ------------------------------------------------------------------ background

    def _work(self) -> None:
        try:
            while True:
                self._wake.wait(timeout=0.05)
                self._wake.clear()
                if self._closed:
                    return
                self._encode_pending()
                if self._closed:
                    return
                now = time.perf_counter()
                if self._stale() and now - self._last_refresh_start >= self.refresh_s:
                    self._last_refresh_start = now
                    self._refresh()
                    self.refresh_seconds.append(time.perf_counter() - now)
        except BaseException as e:  # surfaced to the caller's next push/answer
            self._error = e

    def _encode_pending(self) -> None:
        """clip_vision on the kept frames waiting for it (background thread only)."""
        if not self.background or threading.current_thread() is not self._worker:
            return
        while not self._closed:
            with self._state:
                job = self._pending.popleft() if self._pending else None
            if job is None:
                return
            self._encode_frame(*job)

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, MvgptError):
                raise error
            raise MvgptError(
                f"stream worker failed: {type(error).__name__}: {error}; fix: check the frames "
                "and the package (run with --debug for the traceback)"
            ) from error

    def pending(self) -> int:
        """Kept frames still waiting for clip_vision."""
        with self._state:
            return len(self._pending)

    def _wait_for(self, done: Callable[[], bool], timeout: float) -> bool:
        """Poll ``done`` (waking the worker) until it holds or ``timeout`` seconds pass; a worker
        error is raised here."""
        deadline = time.monotonic() + timeout
        while True:
            self._raise_worker_error()
            if done():
                return True
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.01)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Until every kept frame is encoded and the prefix covers the window (background)."""
        return self._wait_for(lambda: not self.pending() and not self._stale(), timeout)

    def _first_prefix(self, timeout: float = 300.0) -> _Prefix | None:
        """The background's first prefix, once it exists (None when no frame was kept)."""

        def ready() -> bool:
            with self._state:
                return self._prefix is not None or (not self._window and not self._pending)

        if not self._wait_for(ready, timeout):
            raise MvgptError(f"stream: no prefix after {timeout:g} s; fix: check the frames pushed")
        with self._state:
            return self._prefix

    def _drain(self, timeout: float = 300.0) -> None:
        """Until every kept frame pushed so far has been through clip_vision (background)."""
        self._wait_for(lambda: not self.pending(), timeout)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=30)

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ questions

    def answer(
        self,
        question: str,
        *,
        fresh: bool = False,
        on_text: Callable[[str], None] | None = None,
        **generation: object,
    ) -> StreamAnswer:
        """Answer about the window of the latest prefix (``fresh``: of the window as it is now,
        refreshing first when it has changed). Generation options as ``Pipeline.answer``."""
        start = time.perf_counter()
        self._raise_worker_error()
        pipeline = self.pipeline
        ids = pipeline.prompt_ids(question)  # checks the question before any heavy work
        gen = pipeline.generation_config(**generation)
        with self._state:
            prefix = self._prefix
        if self.background and prefix is None and not fresh:
            prefix = self._first_prefix()
        elif fresh or not self.background:
            if self.background:  # the frames kept so far, encoded
                self._drain()
            if prefix is None or self._stale():
                prefix = self._refresh()
        if prefix is None:
            raise MvgptError("stream: no frame has been kept yet; fix: push frames before asking")

        def fill(cache: KVCache) -> bool:
            cache.load(prefix.keys, prefix.values)
            return True

        seconds = {k: 0.0 for k in ENCODE_STAGES}
        self._compute.acquire(question=True)
        try:
            answer = pipeline.generate(
                ids, gen, prefix.encoding, fill, start=start, seconds=seconds, on_text=on_text
            )
        finally:
            self._compute.release()
        return StreamAnswer(
            answer=answer,
            encoding=prefix.encoding,
            window=prefix.window,
            frame_timestamps=prefix.timestamps,
            prefix_age_s=start - prefix.made_at,
            prefix_seconds=prefix.seconds,
        )


# ---------------------------------------------------------------------- sources


class FrameSource:
    """Frames from OpenCV into a ``StreamSession`` on a thread of its own: a camera index, an
    RTSP/HTTP URL, or a file played at its real frame rate (timestamps from its frame rate; a
    live source's from the clock). ``status`` says why it stopped: "ended" (a file's end),
    "stalled" (no frame for ``stall_s``) or "failed" (an error, in ``error``)."""

    def __init__(
        self,
        source: str,
        session: StreamSession,
        stall_s: float = 10.0,
        realtime: bool = True,
        duration_s: float | None = None,
    ) -> None:
        import cv2  # here: the array path of StreamSession needs no OpenCV

        self.source = source
        self.session = session
        self.stall_s = stall_s
        self.realtime = realtime
        self.duration_s = duration_s
        self.is_file = not (source.isdigit() or "://" in source)
        target = int(source) if source.isdigit() else source
        if self.is_file:
            from .video import check_file

            check_file(source)
        self._capture = cv2.VideoCapture(target)
        if not self._capture.isOpened():
            raise MvgptError(
                f"stream source {source!r}: expected a camera index, an RTSP/HTTP URL or a video "
                "file OpenCV can open, got one it cannot open; fix: check the device, the URL "
                "or the file"
            )
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else 30.0
        self._cv2 = cv2
        self.frames = 0
        self.status = "running"
        self.error: BaseException | None = None
        self.late_frames = 0  # file frames read after their real time had passed by a frame
        self.started_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mvgpt-source", daemon=True)

    def start(self) -> FrameSource:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._capture.release()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stream_time(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def _run(self) -> None:
        cv2 = self._cv2
        last_frame_at = time.monotonic()
        try:
            while not self._stop.is_set():
                ok, frame = self._capture.read()
                now = time.monotonic()
                if not ok:
                    if self.is_file:
                        self.status = "ended"
                        return
                    if now - last_frame_at > self.stall_s:
                        self.status = "stalled"
                        return
                    time.sleep(0.01)
                    continue
                last_frame_at = now
                if self.is_file:
                    timestamp = self.frames / self.fps
                    if self.realtime:
                        wait = self.started_at + timestamp - now
                        if wait > 0:
                            time.sleep(wait)
                        elif -wait > 1.0 / self.fps:
                            self.late_frames += 1
                else:
                    timestamp = now - self.started_at
                if self.duration_s is not None and timestamp > self.duration_s:
                    self.status = "ended"
                    return
                self.session.push(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), timestamp)
                self.frames += 1
        except BaseException as e:
            self.status, self.error = "failed", e
