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

from . import manifest as M
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


def check_template(template: object) -> str:
    """``template`` when it holds each of manifest.TEMPLATE_FIELDS once, in order; else
    MvgptError."""
    at = [template.find(f) if isinstance(template, str) else -1 for f in M.TEMPLATE_FIELDS]
    ok = (
        isinstance(template, str)
        and all(template.count(f) == 1 for f in M.TEMPLATE_FIELDS)
        and at == sorted(at)
    )
    if not ok:
        raise MvgptError(
            f"prompt template: expected {', '.join(M.TEMPLATE_FIELDS)} once each, in that order, "
            f"got {template!r}; fix: re-export the package with mvgpt-export"
        )
    return template


def chat_prompt(
    question: str,
    num_placeholders: int = 16,
    system: str = SYSTEM_PROMPT,
    template: str = M.CHATML_TEMPLATE,
    placeholder: str = IMAGE_PLACEHOLDER,
) -> str:
    """The prompt text: ``template`` (the reference's qwen2_instruct ChatML by default) with the
    system prompt, ``num_placeholders`` image placeholders and the question put in. The question
    goes in last, so braces in it are kept as they are."""
    check_question(question)
    head, rest = check_template(template).split(M.TEMPLATE_FIELDS[0])
    middle, rest = rest.split(M.TEMPLATE_FIELDS[1])
    before_question, tail = rest.split(M.TEMPLATE_FIELDS[2])
    images = placeholder * num_placeholders
    return head + system + middle + images + before_question + question + tail


def prompt_ids(
    tokenizer: tokenizers.Tokenizer,
    question: str,
    num_placeholders: int = 16,
    keep: int = 8,
    system: str = SYSTEM_PROMPT,
    template: str = M.CHATML_TEMPLATE,
    placeholder: str = IMAGE_PLACEHOLDER,
    sentinel: int = IMAGE_TOKEN_INDEX,
) -> np.ndarray:
    """Token ids (1-D int64) of the chat prompt with a run of `keep` `sentinel` ids.

    Each text chunk between placeholders is tokenized separately without added special tokens
    (the ChatML markers are in the text and map to their added-token ids); empty chunks give no
    ids.
    """
    if not 1 <= keep <= num_placeholders:
        raise MvgptError(
            f"prompt: expected 1 <= keep <= num_placeholders, got keep={keep}, "
            f"num_placeholders={num_placeholders}; fix: keep the manifest's prompt values"
        )
    text = chat_prompt(question, num_placeholders, system, template, placeholder)
    ids: list[int] = []
    for i, chunk in enumerate(text.split(placeholder)):
        if i > 0:
            ids.append(sentinel)
        if chunk:
            ids.extend(tokenizer.encode(chunk, add_special_tokens=False).ids)
    kept: list[int] = []
    sentinels = 0
    for token in ids:  # the reference's filter_tensors: keep the first `keep` sentinels only
        if token == sentinel:
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
        int(prompt[M.PR_NUM_PLACEHOLDERS]),
        int(prompt[M.PR_NUM_SENTINELS]),
        prompt[M.PR_SYSTEM],
        prompt[M.PR_TEMPLATE],
        prompt[M.PR_PLACEHOLDER],
        int(prompt[M.PR_TOKEN_INDEX]),
    )


def split_visual(
    ids: np.ndarray, sentinel: int = IMAGE_TOKEN_INDEX
) -> tuple[np.ndarray, np.ndarray]:
    """(prefix, suffix): the text ids before and after the one contiguous run of sentinels."""
    ids = np.asarray(ids)
    where = np.flatnonzero(ids == sentinel)
    if where.size == 0 or where[-1] - where[0] + 1 != where.size:
        raise MvgptError(
            "prompt ids: expected one contiguous run of image sentinels "
            f"({sentinel}), got them at positions {where.tolist()}; "
            "fix: build the ids with prompt_ids"
        )
    return ids[: where[0]], ids[where[-1] + 1 :]


def decode_answer(
    tokenizer: tokenizers.Tokenizer, token_ids: Sequence[int], stop: str = STOP_STRING
) -> str:
    """Generated ids -> answer text: special tokens skipped, stripped, a trailing ``stop``
    (`<|im_end|>`) removed (as the reference decodes)."""
    text = tokenizer.decode([int(t) for t in token_ids], skip_special_tokens=True).strip()
    if stop and text.endswith(stop):
        text = text[: -len(stop)].strip()
    return text
