"""A Qwen-shaped tokenizer.json for random checkpoints: byte-level BPE, vocabulary padded with
pronounceable filler words up to Qwen's 151643 regular ids, and the special tokens at Qwen's ids
(<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645).

The real Qwen2.5 tokenizer cannot be downloaded here; this one exercises the same code paths
(special tokens split out, text pieces tokenized separately, byte-level decoding).
"""

from __future__ import annotations

import itertools
import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mvgpt.runtime.prompt import SYSTEM_PROMPT

NUM_REGULAR = 151643
SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}

_CORPUS = [
    SYSTEM_PROMPT,
    "What is happening in this video? Describe the video in detail.",
    "A person walks across the room and picks up a red ball from the table.",
    "The camera pans to the left while a car drives down the street at night.",
    "How many people are there? What color is the shirt? Where does the scene take place?",
    "The man is cooking in a kitchen, cutting vegetables and stirring a pot of soup.",
    "A dog runs through the park, chasing a yellow frisbee thrown by a child.",
]


def _filler_words():
    """Deterministic, unique pseudo-words (with and without a leading space marker)."""
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    for n in itertools.count(1):
        for combo in itertools.product(syllables, repeat=n):
            word = "".join(combo)
            yield "\u0120" + word  # byte-level "space" + word
            yield word


def build_tokenizer() -> Tokenizer:
    """Train a small byte-level BPE, pad it to Qwen's vocabulary layout, add the special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    words = _filler_words()
    while len(vocab) < NUM_REGULAR:
        word = next(words)
        if word not in vocab:
            vocab[word] = len(vocab)
    data["added_tokens"] = [
        {
            "id": idx,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for text, idx in SPECIAL_TOKENS.items()
    ]
    return Tokenizer.from_str(json.dumps(data))
