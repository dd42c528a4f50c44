"""The native tokenizer (runtime/native, through its C API) against Hugging Face `tokenizers` on
10,000 seeded strings per tokenizer: CJK, emoji (ZWJ sequences, flags, skin tones), combining marks
in composed and decomposed forms, digits, whitespace runs of every Unicode kind, newlines,
contractions in any case, special tokens and their near misses, random code points. Three
tokenizers: the built-in model's (GPT-2 ByteLevel regex), the random checkpoints' Qwen-shaped one
(151k ids), and one with Qwen2's own pre-tokenizer (NFC, its Split regex, ByteLevel without regex)
trained here on such strings. Also decoding, invalid UTF-8 and bad files."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from tests.native import libmvgpt

STRINGS = int(os.environ.get("MVGPT_NATIVE_STRINGS", "10000"))  # (fewer under sanitizers)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "\r", "\x0b", "\x0c", "\x85", "\u00a0",
              "\u1680", "\u2000", "\u2007", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f",
              "\u3000", "\u180e", "\u200b", "\ufeff", " \n ", "\t\t \n"]  # fmt: skip
WORDS = ["the", "The", "THE", "video", "What", "colour", "is", "a", "circle", "Hello", "world",
         "don't", "DON'T", "it's", "IT'S", "we're", "I'VE", "you'll", "he'd", "I'm", "x", "naïve",
         "café", "Straße", "İstanbul", "ǅemal", "ΑΒΓ", "αβγ", "Привет", "мир", "שלום", "مرحبا",
         "नमस्ते", "हिन्दी", "ภาษาไทย", "한국어", "日本語", "中文字符", "ひらがな", "カタカナ",
         "ｆｕｌｌｗｉｄｔｈ", "ﬁ", "Ⅻ", "①②", "x²", "½", "٣٤٥", "१२३"]  # fmt: skip
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇩🇪", "🇯🇵", "❤️", "✌🏿", "🧑🏻‍💻", "#️⃣", "🫠"]
PUNCT = [".", ",", "!", "?", "...", "—", "–", "(", ")", "[", "]", "{", "}", "<", ">", "|", "'",
         '"', "`", "~", "@", "#", "$", "%", "^", "&", "*", "+", "=", "/", "\\", ":", ";", "€",
         "£", "¥", "©", "®", "™", "°", "±", "×", "÷", "∑", "∞", "≈", "→", "«", "»", "„",
         "\u201c", "\u201d"]  # fmt: skip
COMBINING = ["\u0301", "\u0300", "\u0308", "\u0327", "\u0323\u0302", "\u093f", "\u0e31", "\u20dd"]


def random_string(rng: random.Random) -> str:
    """One test string: a seeded mix of every kind of piece above."""
    parts = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.25:
            parts.append(rng.choice(WORDS))
        elif kind < 0.40:
            parts.append(rng.choice(WHITESPACE))
        elif kind < 0.48:
            parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9))))
        elif kind < 0.56:
            parts.append(rng.choice(PUNCT) * rng.randint(1, 3))
        elif kind < 0.62:
            parts.append(rng.choice(EMOJI))
        elif kind < 0.68:  # composed and decomposed accents: NFC changes the latter
            parts.append(rng.choice("aeiouncAEIOUNC") + rng.choice(COMBINING))
        elif kind < 0.74:
            parts.append(rng.choice(SPECIALS))
        elif kind < 0.77:  # near misses of special tokens
            special = rng.choice(SPECIALS)
            parts.append(special[: rng.randint(1, len(special) - 1)])
        elif kind < 0.85:  # CJK runs
            parts.append(
                "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 6)))
            )
        elif kind < 0.95:  # random code points (no surrogates), BMP and beyond
            for _ in range(rng.randint(1, 4)):
                cp = rng.choice([rng.randint(0x20, 0x2FF), rng.randint(0x300, 0xFFFF),
                                 rng.randint(0x10000, 0x10FFFF)])  # fmt: skip
                parts.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "?")
        else:
            parts.append("".join(rng.choice("abcXYZ") for _ in range(rng.randint(10, 60))))
    return "".join(parts)


@pytest.fixture(scope="module")
def lib():
    return libmvgpt.load()


@pytest.fixture(scope="module")
def strings() -> list[str]:
    rng = random.Random(20261202)
    return [random_string(rng) for _ in range(STRINGS)]


@pytest.fixture(scope="module")
def qwen2_style(tmp_path_factory, strings) -> Path:
    """A tokenizer with Qwen2's normalizer and pre-tokenizer, trained on a slice of the strings."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(strings[:3000], trainer)
    path = tmp_path_factory.mktemp("qwen2_style") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def _tokenizer_files(tiny_checkpoint, qwen2_style) -> dict[str, Path]:
    builtin = Path(__file__).resolve().parents[2] / "runtime" / "builtin" / "toy-shapes"
    return {
        "builtin": builtin / "tokenizer.json",
        "qwen_shaped": Path(tiny_checkpoint[0]) / "tokenizer.json",
        "qwen2_style": qwen2_style,
    }


@pytest.mark.parametrize("name", ["builtin", "qwen_shaped", "qwen2_style"])
def test_encodes_and_decodes_like_tokenizers(lib, strings, tiny_checkpoint, qwen2_style, name):
    path = _tokenizer_files(tiny_checkpoint, qwen2_style)[name]
    reference = Tokenizer.from_file(str(path))
    config = json.loads(path.read_text())
    print(
        name, "normalizer", config["normalizer"], "pre_tokenizer", config["pre_tokenizer"]["type"]
    )
    native = libmvgpt.Tokenizer(lib, path)
    try:
        assert lib.mvgpt_tokenizer_vocab_size(native.handle) == reference.get_vocab_size()
        wrong, tokens, decoded_wrong = [], 0, []
        for text in strings:
            want = reference.encode(text, add_special_tokens=False).ids
            got = native.encode(text)
            tokens += len(want)
            if got != want:
                wrong.append((text, want, got))
                continue
            for skip in (True, False):
                if native.decode(got, skip) != reference.decode(want, skip_special_tokens=skip):
                    decoded_wrong.append((text, skip))
        print(f"{name}: {len(strings)} strings, {tokens} tokens, {len(wrong)} encoded "
              f"differently, {len(decoded_wrong)} decoded differently")  # fmt: skip
        for text, want, got in wrong[:5]:
            print(repr(text), want, got)
        assert not wrong and not decoded_wrong
        for special in SPECIALS:
            assert native.token_id(special) == reference.token_to_id(special)
        assert native.token_id("no such token at all") == -1
    finally:
        native.close()


def test_decodes_any_ids_like_tokenizers(lib, tiny_checkpoint, qwen2_style):
    """Random id runs split UTF-8 sequences: both give U+FFFD for the same bytes."""
    rng = random.Random(7)
    for name, path in _tokenizer_files(tiny_checkpoint, qwen2_style).items():
        reference = Tokenizer.from_file(str(path))
        native = libmvgpt.Tokenizer(lib, path)
        size = reference.get_vocab_size()
        runs = [[rng.randrange(size) for _ in range(rng.randint(0, 12))] for _ in range(2000)]
        wrong = [r for r in runs if native.decode(r, True) != reference.decode(r)]
        print(name, len(runs), "random id runs,", len(wrong), "decoded differently")
        assert not wrong
        # ids without a token are skipped, as tokenizers skips them (negative ones too)
        beyond = [0, size + 5, 1]
        assert native.decode(beyond) == reference.decode(beyond)
        assert native.decode([-1, 0, -7]) == native.decode([0])
        native.close()


def test_invalid_utf8_is_rejected_with_its_offset(lib, tiny_checkpoint):
    native = libmvgpt.Tokenizer(lib, Path(tiny_checkpoint[0]) / "tokenizer.json")
    cases = {
        b"abc\xffdef": 3, b"\xc3": 0, b"ok \xe2\x82": 3, b"\xed\xa0\x80": 0,  # surrogate
        b"\xc0\xaf": 0, b"\xf4\x90\x80\x80": 0, b"fine\xf0\x9f\x98": 4,  # overlong, > U+10FFFF
    }  # fmt: skip
    for data, offset in cases.items():
        with pytest.raises(libmvgpt.NativeError) as info:
            native.encode_bytes(data)
        print(data, "->", info.value.message)
        assert info.value.status == libmvgpt.INVALID_ARGUMENT
        assert f"at offset {offset}" in info.value.message and "\n" not in info.value.message
    assert native.encode_bytes(b"") == []
    native.close()


def test_bad_files_and_arguments_get_a_status_and_a_message(lib, tmp_path, tiny_checkpoint):
    import ctypes

    good = json.loads((Path(tiny_checkpoint[0]) / "tokenizer.json").read_text())
    cases = {
        "missing.json": (None, libmvgpt.NOT_FOUND, "expected a tokenizer.json file"),
        "broken.json": ("{not json", libmvgpt.BAD_FORMAT, "expected JSON"),
        "nomodel.json": ({}, libmvgpt.BAD_FORMAT, "expected the key \"model\""),
        "wordpiece.json": ({**good, "model": {"type": "WordPiece"}}, libmvgpt.UNSUPPORTED,
                           "expected model.type \"BPE\""),
        "prefix.json": ({**good, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}},
                        libmvgpt.UNSUPPORTED, "without prefix space"),
        "nfkc.json": ({**good, "normalizer": {"type": "NFKC"}}, libmvgpt.UNSUPPORTED, "NFKC"),
        "badregex.json": ({**good, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?<!"}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}},
            libmvgpt.UNSUPPORTED, "does not compile with PCRE2"),
    }  # fmt: skip
    for name, (content, status, words) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(libmvgpt.NativeError) as info:
            libmvgpt.Tokenizer(lib, path)
        print(name, "->", info.value.message)
        assert info.value.status == status and words in info.value.message
        assert "\n" not in info.value.message and "fix:" in info.value.message
    handle = ctypes.c_void_p()
    assert lib.mvgpt_tokenizer_load(None, ctypes.byref(handle)) == libmvgpt.INVALID_ARGUMENT
    assert b"path" in lib.mvgpt_last_error()
    count = ctypes.c_size_t()
    assert lib.mvgpt_tokenizer_encode(None, b"x", 1, None, 0, ctypes.byref(count)) == (
        libmvgpt.INVALID_ARGUMENT
    )
    native = libmvgpt.Tokenizer(lib, Path(tiny_checkpoint[0]) / "tokenizer.json")
    ids = (ctypes.c_int32 * 1)()
    text = b"What is happening in this video?"
    status = lib.mvgpt_tokenizer_encode(native.handle, text, len(text), ids, 1, ctypes.byref(count))
    assert status == libmvgpt.BUFFER_TOO_SMALL and count.value == len(native.encode(text.decode()))
    assert (
        lib.mvgpt_tokenizer_vocab_size(None) == 0 and lib.mvgpt_tokenizer_token_id(None, b"a") == -1
    )
    lib.mvgpt_tokenizer_free(None)  # a no-op, like free(NULL)
    native.close()
