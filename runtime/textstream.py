"""Incremental detokenization for streaming answers: text is emitted only when its bytes are
complete, so a character split across tokens never shows up as U+FFFD."""

from __future__ import annotations

from collections.abc import Callable


class TextStream:
    """Incremental detokenization: emits only text whose bytes are complete (no U+FFFD)."""

    def __init__(self, tokenizer, callback: Callable[[str], None]) -> None:
        self.tokenizer, self.callback = tokenizer, callback
        self.tokens: list[int] = []
        self.prefix = self.read = 0
        self.started = False

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def push(self, token: int) -> None:
        self.tokens.append(token)
        before = self._decode(self.tokens[self.prefix : self.read])
        text = self._decode(self.tokens[self.prefix :])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return  # an incomplete multi-byte character: wait for its next byte
        new = text[len(before) :]
        self.prefix, self.read = self.read, len(self.tokens)
        if not self.started:  # the final answer is stripped; so is the stream's start
            new = new.lstrip()
            self.started = bool(new)
        if new:
            self.callback(new)

    def finish(self) -> None:
        """Emit what is still held back (a character cut off by the token limit)."""
        emitted = self._decode(self.tokens[self.prefix : self.read])
        held = self._decode(self.tokens[self.prefix :])[len(emitted) :]
        if not self.started:
            held = held.lstrip()
        if held:
            self.callback(held)
