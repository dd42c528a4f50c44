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
