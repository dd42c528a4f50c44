"""The ChatML prompt, its token ids with the visual sentinel run, and answer decoding.

The reference (facts §1.8-1.9) writes 16 `<image>` placeholders, splits the prompt on them,
tokenizes each text chunk on its own, puts the sentinel id -200 between chunks, then keeps only
the first 8 sentinels (`filter_tensors`). The resulting contiguous run of 8 sentinels is where
the pipeline splices in the 2402 visual embeddings: `split_visual` returns the text ids on
either side of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tokenizers

from .errors import MvgptError

SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200
STOP_STRING = "<|im_end|>"


def check_question(question: str) -> str:
    """``question`` when it is a non-empty string; MvgptError otherwise."""
    if not isinstance(question, str) or not question.strip():
        raise MvgptError(
            f"empty question: expected a non-empty question about the video, got {question!r}; "
            'fix: pass a question, e.g. "What happens in this video?"'
        )
    return question


def chat_prompt(question: str, num_placeholders: int = 16, system: str = SYSTEM_PROMPT) -> str:
    """The reference's qwen2_instruct (ChatML) prompt with `num_placeholders` image placeholders."""
    check_question(question)
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
        f"{IMAGE_PLACEHOLDER * num_placeholders}\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )


def prompt_ids(
    tokenizer: tokenizers.Tokenizer,
    question: str,
    num_placeholders: int = 16,
    keep: int = 8,
    system: str = SYSTEM_PROMPT,
) -> np.ndarray:
    """Token ids (1-D int64) of the chat prompt with a run of `keep` IMAGE_TOKEN_INDEX sentinels.

    Each text chunk between placeholders is tokenized separately without added special tokens
    (the ChatML markers are in the text and map to their added-token ids); empty chunks give no
    ids.
    """
    if not 1 <= keep <= num_placeholders:
        raise MvgptError(
            f"prompt: expected 1 <= keep <= num_placeholders, got keep={keep}, "
            f"num_placeholders={num_placeholders}; fix: keep the manifest's prompt values"
        )
    text = chat_prompt(question, num_placeholders, system)
    ids: list[int] = []
    for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            ids.extend(tokenizer.encode(chunk, add_special_tokens=False).ids)
    kept: list[int] = []
    sentinels = 0
    for token in ids:  # the reference's filter_tensors: keep the first `keep` sentinels only
        if token == IMAGE_TOKEN_INDEX:
            sentinels += 1
            if sentinels > keep:
                continue
        kept.append(token)
    return np.asarray(kept, dtype=np.int64)


def manifest_prompt_ids(tokenizer: tokenizers.Tokenizer, prompt: dict, question: str) -> np.ndarray:
    """``prompt_ids`` with a package's prompt values (its manifest's ``prompt`` object)."""
    return prompt_ids(
        tokenizer,
        question,
        int(prompt["num_image_placeholders"]),
        int(prompt["num_image_sentinels"]),
        prompt.get("system", SYSTEM_PROMPT),
    )


def split_visual(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prefix, suffix): the text ids before and after the one contiguous run of sentinels."""
    ids = np.asarray(ids)
    where = np.flatnonzero(ids == IMAGE_TOKEN_INDEX)
    if where.size == 0 or where[-1] - where[0] + 1 != where.size:
        raise MvgptError(
            "prompt ids: expected one contiguous run of image sentinels "
            f"({IMAGE_TOKEN_INDEX}), got them at positions {where.tolist()}; "
            "fix: build the ids with prompt_ids"
        )
    return ids[: where[0]], ids[where[-1] + 1 :]


def decode_answer(tokenizer: tokenizers.Tokenizer, token_ids: Sequence[int]) -> str:
    """Generated ids -> answer text: special tokens skipped, stripped, a trailing
    `<|im_end|>` removed (as the reference decodes)."""
    text = tokenizer.decode([int(t) for t in token_ids], skip_special_tokens=True).strip()
    if text.endswith(STOP_STRING):
        text = text[: -len(STOP_STRING)].strip()
    return text
