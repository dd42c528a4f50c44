"""ctypes access to the native runtime's C API (runtime/native/include/mvgpt.h) for the tests:
the library that the set-up command builds (``runtime/native/lib/``), or ``$MVGPT_NATIVE_LIBRARY``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

NATIVE_DIR = Path(__file__).resolve().parents[2] / "runtime" / "native"
LIB_NAME = "libmvgpt.dylib" if sys.platform == "darwin" else "libmvgpt.so"
OK, INVALID_ARGUMENT, NOT_FOUND, BAD_FORMAT, UNSUPPORTED, BUFFER_TOO_SMALL, INTERNAL = range(7)


def library_path() -> Path:
    return Path(os.environ.get("MVGPT_NATIVE_LIBRARY") or NATIVE_DIR / "lib" / LIB_NAME)


def load() -> ctypes.CDLL:
    path = library_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the native runtime is not built; fix: run the README's set-up command "
            "(bash setup.sh) or python -m mvgpt.kernels.build --native"
        )
    lib = ctypes.CDLL(str(path))
    c = ctypes
    lib.mvgpt_last_error.restype = c.c_char_p
    lib.mvgpt_version.restype = c.c_char_p
    lib.mvgpt_tokenizer_load.argtypes = [c.c_char_p, c.POINTER(c.c_void_p)]
    lib.mvgpt_tokenizer_free.argtypes = [c.c_void_p]
    lib.mvgpt_tokenizer_encode.argtypes = [
        c.c_void_p, c.c_char_p, c.c_size_t, c.POINTER(c.c_int32), c.c_size_t,
        c.POINTER(c.c_size_t),
    ]  # fmt: skip
    lib.mvgpt_tokenizer_decode.argtypes = [
        c.c_void_p, c.POINTER(c.c_int32), c.c_size_t, c.c_int, c.c_char_p, c.c_size_t,
        c.POINTER(c.c_size_t),
    ]  # fmt: skip
    lib.mvgpt_tokenizer_token_id.argtypes = [c.c_void_p, c.c_char_p]
    lib.mvgpt_tokenizer_token_id.restype = c.c_int32
    lib.mvgpt_tokenizer_vocab_size.argtypes = [c.c_void_p]
    lib.mvgpt_tokenizer_vocab_size.restype = c.c_size_t
    return lib


class NativeError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"status {status}: {message}")
        self.status, self.message = status, message


class Tokenizer:
    """The native tokenizer through the C API (encode/decode like ``tokenizers.Tokenizer``)."""

    def __init__(self, lib: ctypes.CDLL, path: str | Path):
        self.lib = lib
        self.handle = ctypes.c_void_p()
        self._check(lib.mvgpt_tokenizer_load(str(path).encode(), ctypes.byref(self.handle)))

    def _check(self, status: int) -> None:
        if status != OK:
            raise NativeError(status, self.lib.mvgpt_last_error().decode())

    def close(self) -> None:
        if self.handle:
            self.lib.mvgpt_tokenizer_free(self.handle)
            self.handle = ctypes.c_void_p()

    def encode_bytes(self, data: bytes) -> list[int]:
        count = ctypes.c_size_t()
        room = max(16, 2 * len(data))
        ids = (ctypes.c_int32 * room)()
        status = self.lib.mvgpt_tokenizer_encode(
            self.handle, data, len(data), ids, room, ctypes.byref(count)
        )
        if status == BUFFER_TOO_SMALL:
            room = count.value
            ids = (ctypes.c_int32 * room)()
            status = self.lib.mvgpt_tokenizer_encode(
                self.handle, data, len(data), ids, room, ctypes.byref(count)
            )
        self._check(status)
        return list(ids[: count.value])

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        array = (ctypes.c_int32 * max(1, len(ids)))(*ids)
        length = ctypes.c_size_t()
        room = 64 + 16 * len(ids)
        out = ctypes.create_string_buffer(room)
        self._check(
            self.lib.mvgpt_tokenizer_decode(
                self.handle,
                array,
                len(ids),
                int(skip_special_tokens),
                out,
                room,
                ctypes.byref(length),
            )  # fmt: skip
        )
        return out.raw[: length.value].decode("utf-8")

    def token_id(self, token: str) -> int:
        return self.lib.mvgpt_tokenizer_token_id(self.handle, token.encode())


class ModelParams(ctypes.Structure):
    _fields_ = [
        ("threads", ctypes.c_int),
        ("ops_library", ctypes.c_char_p),
        ("provider", ctypes.c_char_p),
    ]


class StreamParams(ctypes.Structure):
    _fields_ = [
        ("window_s", ctypes.c_double),
        ("refresh_s", ctypes.c_double),
        ("target_fps", ctypes.c_double),
        ("background", ctypes.c_int),
        ("max_pending", ctypes.c_int),
    ]


class AnswerParams(ctypes.Structure):
    _fields_ = [
        ("max_new_tokens", ctypes.c_int),
        ("temperature", ctypes.c_double),
        ("top_p", ctypes.c_double),
        ("top_k", ctypes.c_int),
        ("repetition_penalty", ctypes.c_double),
        ("seed", ctypes.c_uint64),
        ("use_seed", ctypes.c_int),
    ]


TEXT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p)


def declare_model_api(lib: ctypes.CDLL) -> ctypes.CDLL:
    c, vp = ctypes, ctypes.c_void_p
    lib.mvgpt_model_default_params.restype = ModelParams
    lib.mvgpt_model_load.argtypes = [c.c_char_p, c.POINTER(ModelParams), c.POINTER(vp)]
    lib.mvgpt_model_free.argtypes = [vp]
    lib.mvgpt_model_custom_ops.argtypes = [vp]
    lib.mvgpt_model_notes.argtypes = [vp]
    lib.mvgpt_model_notes.restype = c.c_char_p
    lib.mvgpt_encode_frames.argtypes = [vp, vp, c.c_int, c.c_int, c.c_int, c.POINTER(vp)]
    lib.mvgpt_encoding_free.argtypes = [vp]
    lib.mvgpt_encoding_visual.argtypes = [vp, c.POINTER(c.c_size_t), c.POINTER(c.c_size_t)]
    lib.mvgpt_encoding_visual.restype = c.POINTER(c.c_float)
    lib.mvgpt_encoding_frames.argtypes = [
        vp, c.POINTER(c.POINTER(c.c_int32)), c.POINTER(c.POINTER(c.c_int32)),
        c.POINTER(c.c_size_t),
    ]  # fmt: skip
    lib.mvgpt_encoding_frames.restype = c.c_size_t
    lib.mvgpt_answer_default_params.restype = AnswerParams
    lib.mvgpt_answer_question.argtypes = [
        vp,
        vp,
        c.c_char_p,
        c.POINTER(AnswerParams),
        TEXT_CALLBACK,
        vp,
        c.POINTER(vp),
    ]
    lib.mvgpt_answer_text.argtypes = [vp]
    lib.mvgpt_answer_text.restype = c.c_char_p
    lib.mvgpt_answer_json.argtypes = [vp]
    lib.mvgpt_answer_json.restype = c.c_char_p
    lib.mvgpt_answer_token_ids.argtypes = [vp, c.POINTER(c.POINTER(c.c_int32))]
    lib.mvgpt_answer_token_ids.restype = c.c_size_t
    lib.mvgpt_answer_free.argtypes = [vp]
    lib.mvgpt_encode_video.argtypes = [vp, c.c_char_p, c.POINTER(vp)]
    lib.mvgpt_video_files_supported.restype = c.c_int
    lib.mvgpt_stream_default_params.restype = StreamParams
    lib.mvgpt_stream_open.argtypes = [vp, c.POINTER(StreamParams), c.POINTER(vp)]
    lib.mvgpt_stream_free.argtypes = [vp]
    lib.mvgpt_stream_push.argtypes = [
        vp, vp, c.c_int, c.c_int, c.c_double, c.POINTER(c.c_int),
    ]  # fmt: skip
    lib.mvgpt_stream_wait_idle.argtypes = [vp, c.c_double, c.POINTER(c.c_int)]
    lib.mvgpt_stream_answer.argtypes = [
        vp, c.c_char_p, c.c_int, c.POINTER(AnswerParams), TEXT_CALLBACK, vp, c.POINTER(vp),
    ]  # fmt: skip
    return lib


def _answer_params(lib: ctypes.CDLL, options: dict) -> AnswerParams:
    params = lib.mvgpt_answer_default_params()
    for key, value in options.items():
        setattr(params, key, value)
        if key == "seed":
            params.use_seed = 1
    return params


def _callback(on_text):
    """A C text callback around ``on_text(str) -> bool`` (False stops), or a NULL one."""
    if on_text is None:
        return TEXT_CALLBACK()

    def forward(text, length, _user):
        return 0 if on_text(ctypes.string_at(text, length).decode()) else 1

    return TEXT_CALLBACK(forward)


def _record(lib: ctypes.CDLL, answer: ctypes.c_void_p) -> dict:
    """An answer's JSON record (checked against its text and ids), then the answer freed."""
    import json

    try:
        record = json.loads(lib.mvgpt_answer_json(answer).decode())
        ids = ctypes.POINTER(ctypes.c_int32)()
        n = lib.mvgpt_answer_token_ids(answer, ctypes.byref(ids))
        assert record["token_ids"] == ids[:n]
        assert record["answer"] == lib.mvgpt_answer_text(answer).decode()
        return record
    finally:
        lib.mvgpt_answer_free(answer)


def ops_library() -> str:
    """The custom-op library the set-up builds (the Python runtime's)."""
    from mvgpt.runtime.sessions import built_library_path

    return str(built_library_path())


class Model:
    """A package loaded by the native runtime, through the C API."""

    def __init__(
        self,
        lib: ctypes.CDLL,
        package,
        threads: int = 0,
        ops: str | None = None,
        provider: str | None = None,
    ):
        self.lib = declare_model_api(lib)
        self.handle = ctypes.c_void_p()
        library = (ops if ops is not None else ops_library()).encode()
        params = ModelParams(threads, library, provider.encode() if provider else None)
        self._check(lib.mvgpt_model_load(str(package).encode(), params, ctypes.byref(self.handle)))

    def _check(self, status: int) -> None:
        if status != OK:
            raise NativeError(status, self.lib.mvgpt_last_error().decode())

    @property
    def custom_ops(self) -> bool:
        return bool(self.lib.mvgpt_model_custom_ops(self.handle))

    def encode(self, frames) -> ctypes.c_void_p:
        import numpy as np

        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        encoding = ctypes.c_void_p()
        num, height, width = frames.shape[:3]
        self._check(
            self.lib.mvgpt_encode_frames(
                self.handle, frames.ctypes.data, num, height, width, ctypes.byref(encoding)
            )
        )
        return encoding

    def visual(self, encoding):
        import numpy as np

        rows, cols = ctypes.c_size_t(), ctypes.c_size_t()
        data = self.lib.mvgpt_encoding_visual(encoding, ctypes.byref(rows), ctypes.byref(cols))
        return np.ctypeslib.as_array(data, shape=(rows.value, cols.value)).copy()

    def frames(self, encoding) -> tuple[list[int], list[int]]:
        sampled, selected = ctypes.POINTER(ctypes.c_int32)(), ctypes.POINTER(ctypes.c_int32)()
        count = ctypes.c_size_t()
        n = self.lib.mvgpt_encoding_frames(
            encoding, ctypes.byref(sampled), ctypes.byref(selected), ctypes.byref(count)
        )
        return sampled[:n], selected[: count.value]

    def encode_video(self, path) -> ctypes.c_void_p:
        encoding = ctypes.c_void_p()
        self._check(
            self.lib.mvgpt_encode_video(self.handle, str(path).encode(), ctypes.byref(encoding))
        )
        return encoding

    def answer(self, encoding, question: str, on_text=None, **options) -> dict:
        """The answer's JSON record; ``on_text(str) -> bool`` (False stops) hears the pieces."""
        params = _answer_params(self.lib, options)
        callback = _callback(on_text)
        answer = ctypes.c_void_p()
        self._check(
            self.lib.mvgpt_answer_question(
                self.handle,
                encoding,
                question.encode(),
                params,
                callback,
                None,
                ctypes.byref(answer),
            )  # fmt: skip
        )
        return _record(self.lib, answer)

    def free_encoding(self, encoding) -> None:
        self.lib.mvgpt_encoding_free(encoding)

    def close(self) -> None:
        if self.handle:
            self.lib.mvgpt_model_free(self.handle)
            self.handle = ctypes.c_void_p()


class Stream:
    """A native stream session (mvgpt_stream_*) on a Model."""

    def __init__(self, model: Model, **params):
        self.lib, self.model = model.lib, model
        p = self.lib.mvgpt_stream_default_params()
        for key, value in params.items():
            setattr(p, key, value)
        self.handle = ctypes.c_void_p()
        self._check(self.lib.mvgpt_stream_open(model.handle, p, ctypes.byref(self.handle)))

    def _check(self, status: int) -> None:
        if status != OK:
            raise NativeError(status, self.lib.mvgpt_last_error().decode())

    def push(self, frame, timestamp: float) -> bool:
        import numpy as np

        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        kept = ctypes.c_int(-1)
        height, width = frame.shape[:2]
        self._check(
            self.lib.mvgpt_stream_push(
                self.handle, frame.ctypes.data, height, width, timestamp, ctypes.byref(kept)
            )
        )
        return bool(kept.value)

    def wait_idle(self, timeout: float = 120.0) -> bool:
        idle = ctypes.c_int(-1)
        self._check(self.lib.mvgpt_stream_wait_idle(self.handle, timeout, ctypes.byref(idle)))
        return bool(idle.value)

    def answer(self, question: str, fresh: bool = False, on_text=None, **options) -> dict:
        params = _answer_params(self.lib, options)
        callback = _callback(on_text)
        answer = ctypes.c_void_p()
        self._check(
            self.lib.mvgpt_stream_answer(
                self.handle,
                question.encode(),
                int(fresh),
                params,
                callback,
                None,
                ctypes.byref(answer),
            )  # fmt: skip
        )
        return _record(self.lib, answer)

    def close(self) -> None:
        if self.handle:
            self.lib.mvgpt_stream_free(self.handle)
            self.handle = ctypes.c_void_p()
