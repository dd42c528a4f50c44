"""The decode loop alone (runtime/decoder.py ``decode_loop``), on made-up logits: what it keeps,
when it stops, and how many decoder steps it asks for."""

from __future__ import annotations

import numpy as np

from mvgpt.runtime.decoder import decode_loop
from mvgpt.runtime.sampling import GenerationConfig, Sampler

VOCAB, EOS = 8, 7


def one_hot(token: int) -> np.ndarray:
    logits = np.zeros(VOCAB, np.float32)
    logits[token] = 1.0
    return logits


def run(tokens: list[int], limit: int):
    """Greedy decoding where the prefill's logits choose tokens[0] and step i's tokens[i + 1]."""
    steps: list[int] = []
    heard: list[int] = []

    def step(token: int) -> np.ndarray:
        steps.append(token)
        return one_hot(tokens[len(steps)])

    sampler = Sampler(GenerationConfig(eos_token_ids=(EOS,)))
    return decode_loop(one_hot(tokens[0]), step, sampler, limit, heard.append), steps, heard


def test_stops_at_eos_without_keeping_it():
    decoded, steps, heard = run([3, 1, 4, EOS, 5], limit=10)
    assert decoded.token_ids == (3, 1, 4) and heard == [3, 1, 4]
    assert steps == [3, 1, 4] and decoded.steps == 3  # the step after 4 gave the eos
    assert decoded.first_token_at is not None


def test_no_step_after_the_last_token():
    decoded, steps, _ = run([3, 1, 4, 1, 5], limit=3)
    assert decoded.token_ids == (3, 1, 4)
    assert steps == [3, 1]  # the limit's last token needs no logits after it


def test_eos_first_gives_an_empty_answer():
    decoded, steps, heard = run([EOS], limit=5)
    assert decoded.token_ids == () and steps == [] and heard == []
    assert decoded.first_token_at is None and decoded.steps == 0
