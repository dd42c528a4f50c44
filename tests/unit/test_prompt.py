"""The ChatML prompt, the sentinel run of its token ids, and answer decoding."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mvgpt.runtime.errors import MvgptError
from mvgpt.runtime.prompt import (
    IMAGE_TOKEN_INDEX,
    SYSTEM_PROMPT,
    chat_prompt,
    decode_answer,
    prompt_ids,
    split_visual,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "You are a helpful assistant.",
    "What happens in this video?",
    "A man rides a bike in the park, then he stops and waves.",
]

BEFORE = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"


def small_tokenizer(specials=SPECIALS):
    """A byte-level BPE trained on a few sentences (like Qwen's, much smaller)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 5, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer()


def test_chat_prompt_is_the_reference_string():
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + "<image>" * 16
        + "\nWhat is shown?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat_prompt("What is shown?") == expected


def test_sentinel_run_is_contiguous_and_8_long(tokenizer):
    ids = prompt_ids(tokenizer, "What happens in this video?")
    assert ids.dtype == np.int64 and ids.ndim == 1
    where = np.flatnonzero(ids == IMAGE_TOKEN_INDEX)
    assert where.size == 8
    assert np.array_equal(where, np.arange(where[0], where[0] + 8))


def test_text_around_the_run_is_exact(tokenizer):
    question = "What happens in this video?"
    prefix, suffix = split_visual(prompt_ids(tokenizer, question))
    after = f"\n{question}<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(prefix.tolist(), skip_special_tokens=False) == BEFORE
    assert tokenizer.decode(suffix.tolist(), skip_special_tokens=False) == after
    assert prefix.tolist() == tokenizer.encode(BEFORE, add_special_tokens=False).ids
    assert suffix.tolist() == tokenizer.encode(after, add_special_tokens=False).ids


def test_special_tokens_map_to_their_ids(tokenizer):
    prefix, suffix = split_visual(prompt_ids(tokenizer, "Why?"))
    start, end = tokenizer.token_to_id("<|im_start|>"), tokenizer.token_to_id("<|im_end|>")
    assert (start, end) == (1, 2)
    assert prefix[0] == start and prefix.tolist().count(start) == 2
    assert prefix.tolist().count(end) == 1
    assert suffix.tolist().count(end) == 1 and suffix[-1] != end  # "assistant\n" follows


def test_keep_changes_the_run_length(tokenizer):
    ids = prompt_ids(tokenizer, "Why?", num_placeholders=4, keep=4)
    assert int((ids == IMAGE_TOKEN_INDEX).sum()) == 4


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_empty_question_is_an_error(tokenizer, question):
    with pytest.raises(MvgptError) as info:
        prompt_ids(tokenizer, question)
    assert "\n" not in str(info.value)


def test_split_visual_rejects_a_broken_run():
    with pytest.raises(MvgptError):
        split_visual(np.array([5, IMAGE_TOKEN_INDEX, 6, IMAGE_TOKEN_INDEX, 7]))
    with pytest.raises(MvgptError):
        split_visual(np.array([5, 6, 7]))


def test_decode_answer_skips_specials_and_strips(tokenizer):
    ids = tokenizer.encode("  A man rides a bike.<|im_end|>", add_special_tokens=False).ids
    assert ids[-1] == tokenizer.token_to_id("<|im_end|>")
    assert decode_answer(tokenizer, ids) == "A man rides a bike."


def test_decode_answer_drops_a_literal_trailing_stop_string():
    plain = small_tokenizer(specials=["<|endoftext|>"])  # "<|im_end|>" is ordinary text here
    ids = plain.encode("A man waves.<|im_end|>", add_special_tokens=False).ids
    assert plain.decode(ids).endswith("<|im_end|>")
    assert decode_answer(plain, ids) == "A man waves."
