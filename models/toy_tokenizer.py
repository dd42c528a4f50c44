"""The toy task's tokenizer (issue 16): a small byte-level BPE trained on the task's own text.

The corpus is everything the model reads or writes on the task: the runtime's ChatML prompt
(`mvgpt.runtime.prompt.chat_prompt`, split the way `prompt_ids` splits it: on `<image>`, which
never reaches the tokenizer, and on the special tokens), every filling of every question template
in `toy_task.json`, and every answer word, alone (an answer follows "assistant\\n", so it is
generated without a leading space) and after a space (as the words appear inside questions).
The 256 byte symbols keep any other text encodable.

Special tokens follow the layout `exporter.package.special_token_ids` reads and Qwen uses:
`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, appended after the regular tokens in that order.
The result is deterministic (same corpus, same trainer settings), about 350 tokens, each answer
word one token. `write_tokenizer(folder)` saves `folder/tokenizer.json`, the file a checkpoint
folder holds and the exporter copies into the package.
"""

from __future__ import annotations

import itertools
import string
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from mvgpt.models.toy_videos import load_spec
from mvgpt.runtime.prompt import IMAGE_PLACEHOLDER, chat_prompt

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOKENIZER_FILE = "tokenizer.json"
_MAX_VOCAB = 1024  # a cap, not a target: training stops once every corpus word is one token


def filled_questions(spec: dict | None = None) -> list[str]:
    """Every filling of every template, whether or not a scene would ask it."""
    spec = spec or load_spec()
    domains = {"shape": list(spec["shapes"]), "colour": list(spec["colours"])}
    out = []
    for q in spec["questions"]:
        fields = [name for _, name, _, _ in string.Formatter().parse(q["template"]) if name]
        for values in itertools.product(*(domains[f] for f in fields)):
            out.append(q["template"].format(**dict(zip(fields, values, strict=True))))
    return out


def answer_words(spec: dict | None = None) -> list[str]:
    """All answer words, each once, in spec order."""
    spec = spec or load_spec()
    return list(dict.fromkeys(a for q in spec["questions"] for a in q["answers"]))


def _text_pieces(text: str) -> list[str]:
    """`text` split on `<image>` and the special tokens, as the runtime hands it to the
    tokenizer (the special tokens themselves are added tokens, never BPE merges)."""
    pieces = [text]
    for marker in (IMAGE_PLACEHOLDER, *SPECIAL_TOKENS):
        pieces = [part for piece in pieces for part in piece.split(marker)]
    return [piece for piece in pieces if piece]


def corpus(spec: dict | None = None) -> list[str]:
    """The training text, in a fixed order."""
    texts = []
    for question in filled_questions(spec):
        texts.extend(_text_pieces(chat_prompt(question)))
    for word in answer_words(spec):
        texts.extend([word, f" {word}"])
    return texts


def build_tokenizer(spec: dict | None = None) -> Tokenizer:
    """Train the byte-level BPE on `corpus` and append the ChatML special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_MAX_VOCAB,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(spec), trainer)
    tokenizer.add_special_tokens(
        [AddedToken(text, special=True, normalized=False) for text in SPECIAL_TOKENS]
    )
    return tokenizer


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """{token text: id} of the ChatML special tokens."""
    return {text: tokenizer.token_to_id(text) for text in SPECIAL_TOKENS}


def generation_config(tokenizer: Tokenizer) -> dict:
    """A generation_config.json for a checkpoint using this tokenizer: greedy, stop on
    `<|im_end|>` or `<|endoftext|>` (Qwen's convention with this tokenizer's ids)."""
    ids = special_token_ids(tokenizer)
    end, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    return {
        "bos_token_id": end,
        "pad_token_id": end,
        "eos_token_id": [im_end, end],
        "do_sample": False,
    }


def write_tokenizer(folder: str | Path, spec: dict | None = None) -> Path:
    """Build the tokenizer and save it as `folder/tokenizer.json`; return the path."""
    path = Path(folder) / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    build_tokenizer(spec).save(str(path))
    return path
