"""Next-token choice: the generation options (validated once) and a numpy sampler.

The order is Hugging Face generate's: repetition penalty over the tokens generated so far (also
when greedy; the reference passes only inputs_embeds, so the prompt is not penalized), then either
argmax, or temperature -> top-k -> top-p -> a draw from the softmax with a seeded numpy Generator.
Logits are processed in float32 as HF does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import MvgptError

# HF GenerationConfig defaults for keys a generation_config.json leaves out (top_k is 50 there)
_HF_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}


def _bad(name: str, expected: str, got: object) -> MvgptError:
    return MvgptError(
        f"generation option {name}: expected {expected}, got {got!r}; fix: change {name} in the "
        "generation options or the manifest"
    )


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options. `do_sample=False` (or temperature 0) is greedy decoding."""

    max_new_tokens: int = 1024
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = (151645,)
    seed: int | None = None

    def __post_init__(self) -> None:
        def is_int(value: object) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        def is_real(value: object) -> bool:
            return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)

        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise _bad("max_new_tokens", "an integer >= 1", self.max_new_tokens)
        if not isinstance(self.do_sample, (bool, np.bool_)):
            raise _bad("do_sample", "true or false", self.do_sample)
        if not is_real(self.temperature) or not (math.isfinite(self.temperature)):
            raise _bad("temperature", "a finite number >= 0", self.temperature)
        if self.temperature < 0:
            raise _bad("temperature", "a finite number >= 0", self.temperature)
        if not is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise _bad("top_p", "a number in (0, 1]", self.top_p)
        if not is_int(self.top_k) or self.top_k < 0:
            raise _bad("top_k", "an integer >= 0 (0 disables it)", self.top_k)
        penalty = self.repetition_penalty
        if not is_real(penalty) or not (math.isfinite(penalty) and penalty > 0):
            raise _bad("repetition_penalty", "a finite number > 0", penalty)
        eos = self.eos_token_ids
        if not isinstance(eos, tuple) or not eos or not all(is_int(t) and t >= 0 for t in eos):
            raise _bad("eos_token_ids", "a non-empty tuple of token ids >= 0", eos)
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise _bad("seed", "None or an integer >= 0", self.seed)
        if self.temperature == 0 and self.do_sample:  # temperature 0 means greedy
            object.__setattr__(self, "do_sample", False)

    @property
    def greedy(self) -> bool:
        return not self.do_sample

    @classmethod
    def official(cls, generation_config_json: dict, **overrides: object) -> GenerationConfig:
        """The official inference defaults (inference.py): greedy unless a temperature > 0 is
        asked for; repetition penalty and eos ids still come from generation_config.json."""
        temperature = overrides.get("temperature")
        sample = isinstance(temperature, (int, float)) and temperature > 0
        return cls.from_dict(generation_config_json, **{"do_sample": sample, **overrides})

    @classmethod
    def from_dict(cls, generation_config_json: dict, **overrides: object) -> GenerationConfig:
        """Options from a HF generation_config.json dict, then `overrides` (None values ignored).

        Keys of the json that are not decoding options (bos_token_id, transformers_version...)
        are ignored; a sampling key the json leaves out takes HF's default (top_k 50). The json's
        `eos_token_id` (an int or a list) becomes `eos_token_ids`. A temperature of 0 means
        greedy. Unknown override names raise MvgptError.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for key in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k"):
            if key in generation_config_json:
                values[key] = generation_config_json[key]
            elif key in _HF_DEFAULTS:
                values[key] = _HF_DEFAULTS[key]
        if "repetition_penalty" in generation_config_json:
            values["repetition_penalty"] = generation_config_json["repetition_penalty"]
        eos = generation_config_json.get("eos_token_id")
        if eos is not None:
            values["eos_token_ids"] = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        for key, value in overrides.items():
            if key not in fields:
                raise MvgptError(
                    f"generation option {key!r} unknown: expected one of {sorted(fields)}, "
                    f"got {key!r}; fix: use one of those names"
                )
            if value is not None:
                values[key] = tuple(value) if key == "eos_token_ids" else value
        values = {k: v for k, v in values.items() if v is not None}
        return cls(**values)

    @classmethod
    def check_overrides(cls, **overrides: object) -> None:
        """Raise MvgptError for an unknown option or a bad value among ``overrides`` (None values
        ignored) before any generation_config.json is at hand: the checks ``from_dict`` makes."""
        cls.from_dict({}, **overrides)


class Sampler:
    """Chooses each next token from the decoder's last-position logits."""

    def __init__(self, cfg: GenerationConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)

    def process(self, logits: np.ndarray, generated: Sequence[int]) -> np.ndarray:
        """The float32 scores after every enabled processor (before softmax)."""
        cfg = self.cfg
        scores = np.array(logits, dtype=np.float32).reshape(-1)  # a copy
        if cfg.repetition_penalty != 1.0 and len(generated) > 0:
            seen = np.unique(np.asarray(generated, dtype=np.int64))
            picked = scores[seen]
            penalty = np.float32(cfg.repetition_penalty)
            scores[seen] = np.where(picked < 0, picked * penalty, picked / penalty)
        if cfg.greedy:
            return scores
        if cfg.temperature != 1.0:
            scores = scores / np.float32(cfg.temperature)
        if 0 < cfg.top_k < scores.size:
            kth = np.partition(scores, scores.size - cfg.top_k)[scores.size - cfg.top_k]
            scores[scores < kth] = -np.inf  # ties with the k-th value stay, as in HF
        if cfg.top_p < 1.0:
            order = np.argsort(scores, kind="stable")  # ascending
            ranked = scores[order]
            probs = np.exp(ranked - ranked[-1])
            cumulative = np.cumsum(probs / probs.sum(), dtype=np.float32)
            drop = cumulative <= np.float32(1.0 - cfg.top_p)
            drop[-1] = False  # keep at least the most likely token
            scores[order[drop]] = -np.inf
        return scores

    def next_token(self, logits: np.ndarray, generated: Sequence[int]) -> int:
        """The next token id given `logits` (V,) and the ids generated so far."""
        scores = self.process(logits, generated)
        if self.cfg.greedy:
            return int(np.argmax(scores))
        probs = np.exp(scores.astype(np.float64) - scores.max())
        cumulative = np.cumsum(probs)
        draw = self.rng.random() * cumulative[-1]
        return int(min(np.searchsorted(cumulative, draw, side="right"), scores.size - 1))

    def is_eos(self, token: int) -> bool:
        return token in self.cfg.eos_token_ids
