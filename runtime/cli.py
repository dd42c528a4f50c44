"""``mvgpt-run``: answer questions about a video with a model package, streamed to stdout.

    mvgpt-run VIDEO QUESTION [--question Q ...] [--model PKG] [--json] [options]
    mvgpt-run --demo                       (the built-in sample video and its questions)
    mvgpt-run VIDEO --interactive          (questions from stdin, one per line, until EOF)
    mvgpt-run --stream SOURCE              (live: a camera index, an RTSP/HTTP URL or a file
                                            played in real time; questions from stdin)
    mvgpt-run --stream SOURCE QUESTION --every N   (ask QUESTION every N seconds)

The video is encoded once and every question reuses it. Without --model, the built-in model is
used: a toy Mobile-VideoGPT that ships with mvgpt, trained on synthetic videos of coloured shapes
(it answers what colour, what shape, which way and how many about such videos, nothing else).
--demo asks it the questions of the built-in sample video (one of each kind) and prints each
question with its answer. --model random-tiny is a tiny model with RANDOM weights, made in the
cache folder on first use (tests, smoke checks; needs the export extra). Errors are one stderr
line and exit 1 (--debug shows the traceback); usage errors exit 2. Warnings and notes are held
back until the video has been read, so a bad input gives exactly one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import MvgptError, error_line

PROG = "mvgpt-run"


class _HeldNotes(logging.Handler):
    """Collects notes and mvgpt log warnings; writes them to stderr once released."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.held: list[str] = []
        self.released = False

    def note(self, message: str, kind: str = "note") -> None:
        line = f"{PROG}: {kind}: {' '.join(message.split())}\n"
        if self.released:
            sys.stderr.write(line)
            sys.stderr.flush()
        else:
            self.held.append(line)

    def emit(self, record: logging.LogRecord) -> None:
        self.note(record.getMessage(), record.levelname.lower())

    def release(self) -> None:
        self.released = True
        sys.stderr.write("".join(self.held))
        sys.stderr.flush()
        self.held.clear()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .default_model import DEMO_MAX_NEW_TOKENS, RANDOM_MODEL
    from .package import PROVIDERS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Without --model: the built-in toy model (trained on synthetic videos of coloured "
            "shapes; $MVGPT_BUILTIN names another built-in folder). --model random-tiny: a tiny "
            "model with RANDOM weights, made in the cache folder ($MVGPT_CACHE) on first use "
            "(a folder named random-tiny wins). --demo caps answers at "
            f"{DEMO_MAX_NEW_TOKENS} new tokens unless --max-new-tokens is given."
        ),
    )
    parser.add_argument("video", nargs="?", metavar="VIDEO", help="video file")
    parser.add_argument("question", nargs="?", metavar="QUESTION", help="question to answer")
    parser.add_argument(
        "--question",
        "-q",
        dest="more",
        action="append",
        default=[],
        metavar="Q",
        help="another question about the same video (repeatable; the video is encoded once)",
    )
    parser.add_argument(
        "--model",
        metavar="PKG",
        help=f"package folder (default: the built-in toy model); {RANDOM_MODEL!r}: random weights",
    )
    parser.add_argument("--max-new-tokens", type=int, metavar="N")
    parser.add_argument("--temperature", type=float, metavar="T", help="> 0 samples (default 0)")
    parser.add_argument("--top-p", type=float, metavar="P")
    parser.add_argument("--top-k", type=int, metavar="K")
    parser.add_argument("--seed", type=int, metavar="S")
    parser.add_argument("--repetition-penalty", type=float, metavar="R")
    parser.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads")
    parser.add_argument("--provider", choices=tuple(PROVIDERS), default="cpu")
    parser.add_argument("--json", action="store_true", help="one JSON object per question")
    parser.add_argument(
        "--demo", action="store_true", help="the built-in sample video and its questions"
    )
    parser.add_argument("--interactive", action="store_true", help="read questions from stdin")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    live = parser.add_argument_group("live video (--stream)")
    live.add_argument("--stream", metavar="SOURCE", help="camera index, RTSP/HTTP URL or file")
    live.add_argument("--every", type=float, metavar="N", help="ask QUESTION every N seconds")
    live.add_argument("--window", type=float, metavar="S", help="seconds of video (default 16)")
    live.add_argument(
        "--refresh", type=float, default=2.0, metavar="S", help="prefix refresh period (2)"
    )
    live.add_argument(
        "--stall-timeout", type=float, default=10.0, metavar="S", help="give up after S s (10)"
    )
    live.add_argument("--duration", type=float, metavar="S", help="stop after S s of stream")
    args = parser.parse_args(argv)
    if args.stream is not None:
        if args.demo or args.interactive or args.more:
            parser.error("--stream takes no --demo, --interactive or --question")
        if args.question is not None:
            parser.error("--stream takes one QUESTION (with --every) or none (stdin)")
        args.question, args.video = args.video, None
        if (args.question is None) != (args.every is None):
            parser.error("--stream: a QUESTION needs --every N, and --every needs a QUESTION")
        for name in ("every", "window", "refresh", "stall_timeout", "duration"):
            value = getattr(args, name)
            if value is not None and not value > 0:
                parser.error(f"--{name.replace('_', '-')}: expected seconds > 0, got {value}")
        return args
    if args.demo:
        if args.video is not None:
            parser.error("--demo takes no VIDEO (it uses the built-in sample video)")
    elif args.video is None:
        parser.error("the following arguments are required: VIDEO (or use --demo)")
    elif args.question is None and not args.more and not args.interactive:
        parser.error("the following arguments are required: QUESTION (or --interactive)")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected an integer >= 1, got {args.threads}")
    return args


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


def _questions_from_stdin():
    while True:
        sys.stderr.write("question> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            sys.stderr.write("\n")
            return
        if line.strip():
            yield line.strip()


def _say(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run(args: argparse.Namespace, notes: _HeldNotes) -> None:
    from .default_model import DEMO_MAX_NEW_TOKENS, builtin_sample
    from .pipeline import ENCODE_STAGES
    from .prompt import check_question

    questions = [q for q in [args.question] if q is not None] + list(args.more)
    video = args.video
    if args.demo:
        sample = builtin_sample()
        video = str(sample.video)
        if not questions and not args.interactive:
            questions = [q["question"] for q in sample.questions]
        if args.max_new_tokens is None:
            args.max_new_tokens = DEMO_MAX_NEW_TOKENS  # the toy model answers in a word or two
        notes.note(f"--demo: the built-in sample video {video} (a scene held out of training)")
    for question in questions:  # checked before any heavy work
        check_question(question)
    options = _generation_options(args)
    from .video import check_file  # here: the OpenCV log levels are set first (main)

    check_file(video)  # fail fast, before loading or making a model
    pipeline = _load_pipeline(args, notes)
    encoding = pipeline.encode(video)
    notes.release()

    pending = iter(questions)
    if args.interactive:
        pending = (q for source in (questions, _questions_from_stdin()) for q in source)
    headers = len(questions) > 1 or args.interactive
    for index, question in enumerate(pending):
        if headers and not args.json:
            _write(f"Q: {question}\nA: ")
        on_text = None if args.json else _write
        answer = pipeline.answer(encoding, question, on_text=on_text, **options)
        seconds, ttft = dict(answer.seconds), answer.ttft_s
        if index == 0:  # this run encoded the video (above) for its first question
            seconds.update({k: encoding.seconds.get(k, 0.0) for k in ENCODE_STAGES})
            ttft += sum(encoding.seconds.values())
        if not args.json:
            _write("\n")
            continue
        record = {
            "question": question,
            "answer": answer.text,
            "token_ids": list(answer.token_ids),
            "frame_indices": list(answer.frame_indices),
            "selected_frames": list(answer.selected_frames),
            "seconds": {k: round(v, 6) for k, v in seconds.items()},
            "ttft_s": round(ttft, 6),
            "decode_tokens_per_s": answer.decode_tokens_per_s,
            "encoding_reused": answer.encoding_reused,
            "peak_rss_mb": _peak_rss_mb(),
            "provider": args.provider,
            "custom_ops": pipeline.package.custom_ops,
        }
        _write(json.dumps(record, ensure_ascii=False) + "\n")


def _generation_options(args: argparse.Namespace) -> dict:
    """The generation flags as ``Pipeline.answer`` options, checked before any heavy work."""
    from .sampling import GenerationConfig

    options = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        repetition_penalty=args.repetition_penalty,
    )
    GenerationConfig.check_overrides(**options)
    return options


def _model_path(args: argparse.Namespace, notes: _HeldNotes) -> Path:
    """--model's package folder: the built-in toy package without --model, the cached random
    package for ``random-tiny`` (a folder of that name wins), else the folder given."""
    from .default_model import RANDOM_MODEL, builtin_package, default_package

    if args.model is None:
        package = builtin_package()
        notes.note(
            f"no --model given: using the built-in toy model ({package}), trained on synthetic "
            "videos of coloured shapes only; pass --model PKG for a real one"
        )
        return package
    if args.model == RANDOM_MODEL and not Path(args.model).exists():
        return default_package(lambda message: _say(f"{PROG}: note: {message}\n"))
    return Path(args.model)


def _load_pipeline(args: argparse.Namespace, notes: _HeldNotes):
    """--model's package (default: the built-in one), loaded; notes say when weights are random."""
    from .pipeline import Pipeline

    package = _model_path(args, notes)
    pipeline = Pipeline.load(package, args.provider, args.threads)
    if pipeline.package.random_weights:
        notes.note(f"{package} has RANDOM weights: the answer is noise")
    return pipeline


def run_stream(args: argparse.Namespace, notes: _HeldNotes) -> None:
    """--stream: frames from SOURCE into a StreamSession, questions from stdin or --every."""
    import queue
    import threading
    import time

    from .prompt import check_question
    from .stream import FrameSource, StreamSession

    if args.question is not None:
        check_question(args.question)
    options = _generation_options(args)
    pipeline = _load_pipeline(args, notes)
    session = StreamSession(pipeline, window_s=args.window, refresh_s=args.refresh)
    try:
        source = FrameSource(args.stream, session, args.stall_timeout, duration_s=args.duration)
    except BaseException:
        session.close()
        raise
    notes.release()
    asked: queue.Queue[str] = queue.Queue()
    if args.question is None:

        def read_stdin() -> None:
            for line in sys.stdin:
                if line.strip():
                    asked.put(line.strip())

        threading.Thread(target=read_stdin, daemon=True).start()
    source.start()
    next_at = args.every
    try:
        while source.running:
            if args.question is not None:
                if source.stream_time() < next_at:
                    time.sleep(0.02)
                    continue
                question, next_at = args.question, next_at + args.every
            else:
                try:
                    question = asked.get(timeout=0.05)
                except queue.Empty:
                    continue
            waited = time.monotonic()
            while not session.window_frames() and source.running:  # the first kept frame
                if time.monotonic() - waited > args.stall_timeout:
                    break
                time.sleep(0.01)
            if not session.window_frames():
                break
            check_question(question)
            _answer_live(args, session, source, question, options)
    finally:
        source.stop()
        session.close()
    if source.status == "failed" and source.error is not None:
        error = source.error
        raise (
            error
            if isinstance(error, MvgptError)
            else MvgptError(f"stream source {args.stream!r} failed: {error}; fix: check the source")
        )
    if source.status == "stalled":
        raise MvgptError(
            f"stream source {args.stream!r} stalled: expected frames, got none for "
            f"{args.stall_timeout:g} s; fix: check the camera or the network (--stall-timeout)"
        )
    notes.note(
        f"stream ended: {source.frames} frames ({source.frames / source.fps:.1f} s at "
        f"{source.fps:g} fps), {session.kept} kept, {session.dropped} dropped"
    )


def _answer_live(args, session, source, question: str, options: dict) -> None:
    if not args.json:
        _write(f"Q: {question}\n")
    live = session.answer(question, on_text=None if args.json else _write, **options)
    first, last = live.window
    if not args.json:
        _write(f"\n   (video {first:.1f}-{last:.1f} s; prefix {live.prefix_age_s:.1f} s old)\n")
        return
    answer = live.answer
    record = {
        "question": question,
        "answer": answer.text,
        "token_ids": list(answer.token_ids),
        "window": [round(first, 3), round(last, 3)],
        "frame_timestamps": [round(t, 3) for t in live.frame_timestamps],
        "frame_indices": list(answer.frame_indices),
        "selected_frames": list(answer.selected_frames),
        "stream_time_s": round(source.stream_time(), 3),
        "prefix_age_s": round(live.prefix_age_s, 6),
        "prefix_seconds": {k: round(v, 6) for k, v in live.prefix_seconds.items()},
        "seconds": {k: round(v, 6) for k, v in answer.seconds.items()},
        "ttft_s": round(answer.ttft_s, 6),
        "decode_tokens_per_s": answer.decode_tokens_per_s,
        "frames": source.frames,
        "kept": session.kept,
        "dropped": session.dropped,
        "peak_rss_mb": _peak_rss_mb(),
        "provider": args.provider,
        "custom_ops": session.pipeline.package.custom_ops,
    }
    _write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.debug:  # FFmpeg and OpenCV write their own lines on a bad file: one line is ours
        for name, level in (("OPENCV_LOG_LEVEL", "ERROR"), ("OPENCV_FFMPEG_LOGLEVEL", "-8")):
            os.environ.setdefault(name, level)
    notes = _HeldNotes()
    logger = logging.getLogger("mvgpt")
    logger.addHandler(notes)
    logger.propagate = False
    try:
        (run_stream if args.stream is not None else run)(args, notes)
    except MvgptError as e:
        if args.debug:
            raise
        sys.stderr.write(error_line(PROG, e))
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 1
    except Exception as e:  # anything else is a bug: still one line unless --debug
        if args.debug:
            raise
        sys.stderr.write(error_line(PROG, e))
        return 1
    finally:
        logger.removeHandler(notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
