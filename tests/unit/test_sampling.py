"""Generation options and the numpy sampler (hand cases, seeding, HF logits processors)."""

import subprocess
import sys

import numpy as np
import pytest

from mvgpt.runtime.errors import MvgptError
from mvgpt.runtime.sampling import GenerationConfig, Sampler

NEG_INF = -np.inf


def sampler(**kwargs):
    return Sampler(GenerationConfig(**kwargs))


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_greedy_is_argmax():
    rng = np.random.default_rng(0)
    greedy = sampler()
    for _ in range(20):
        logits = rng.normal(size=1000).astype(np.float32)
        assert greedy.next_token(logits, [int(rng.integers(1000))]) == int(np.argmax(logits))


def test_repetition_penalty_by_hand():
    logits = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
    out = sampler(repetition_penalty=2.0).process(logits, [0, 1, 1])
    np.testing.assert_array_equal(out, [1.0, -2.0, 0.5, 3.0])  # >0: /p, <0: *p, unseen kept


def test_repetition_penalty_applies_when_greedy():
    logits = np.array([3.0, 2.0], np.float32)
    assert sampler().next_token(logits, [0]) == 0
    assert sampler(repetition_penalty=2.0).next_token(logits, [0]) == 1  # 3/2 < 2


def test_top_k_by_hand():
    logits = np.array([1.0, 5.0, 3.0, 4.0, 2.0], np.float32)
    out = sampler(do_sample=True, top_k=2).process(logits, [])
    np.testing.assert_array_equal(out, [NEG_INF, 5.0, NEG_INF, 4.0, NEG_INF])
    tied = np.array([1.0, 3.0, 3.0, 2.0], np.float32)  # ties with the k-th value stay
    out = sampler(do_sample=True, top_k=1).process(tied, [])
    np.testing.assert_array_equal(out, [NEG_INF, 3.0, 3.0, NEG_INF])


def test_top_p_by_hand():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    out = sampler(do_sample=True, top_p=0.75).process(logits, [])
    # ascending cumulative probs 0.05, 0.20, 0.50, 1.0: those <= 0.25 go
    assert np.isfinite(out).tolist() == [True, True, False, False]
    out = sampler(do_sample=True, top_p=0.01).process(logits, [])
    assert np.isfinite(out).tolist() == [True, False, False, False]  # at least one stays


def test_temperature_then_top_k_then_top_p():
    logits = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    out = sampler(do_sample=True, temperature=0.5, top_k=3, top_p=0.9).process(logits, [])
    # /0.5 -> [4, 2, 0, -2]; top-3 drops -2; p = softmax([4,2,0]) = .867 .117 .016
    np.testing.assert_array_equal(out, [4.0, 2.0, NEG_INF, NEG_INF])


def test_same_seed_same_tokens():
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=50).astype(np.float32) for _ in range(40)]
    runs = []
    for seed in (7, 7, 8):
        s = sampler(do_sample=True, temperature=1.5, seed=seed)
        runs.append([s.next_token(x, []) for x in logits])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_frequencies_follow_the_softmax(temperature):
    logits = np.array([1.0, 0.5, 0.0, -0.5, -3.0], np.float32)
    s = sampler(do_sample=True, temperature=temperature, seed=0)
    draws = 20000
    counts = np.bincount([s.next_token(logits, []) for _ in range(draws)], minlength=5)
    expected = softmax(logits.astype(np.float64) / temperature)
    diff = np.abs(counts / draws - expected).max()
    print(f"temperature {temperature}: max |frequency - softmax| = {diff:.4f}")
    assert diff < 0.015  # about 4.5 standard errors of the largest probability


def test_masked_tokens_are_never_drawn():
    logits = np.array([0.0, 0.1, 0.2, 5.0, 0.3], np.float32)
    s = sampler(do_sample=True, top_k=2, seed=3)
    assert set(s.next_token(logits, []) for _ in range(300)) <= {3, 4}


def test_matches_transformers_logits_processors():
    torch = pytest.importorskip("torch")
    generation = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(2)
    for case in range(10):
        logits = (rng.normal(size=2000) * (0.3 + 0.4 * case)).astype(np.float32)
        generated = rng.integers(0, 2000, size=30).tolist()
        penalty, temperature, top_k, top_p = 1.1 + 0.05 * case, 0.7, 20 * (case + 1), 0.8
        chain = [
            generation.RepetitionPenaltyLogitsProcessor(penalty),
            generation.TemperatureLogitsWarper(temperature),
            generation.TopKLogitsWarper(top_k),
            generation.TopPLogitsWarper(top_p),
        ]
        scores = torch.from_numpy(logits.copy())[None]
        ids = torch.tensor([generated])
        for processor in chain:
            scores = processor(ids, scores)
        ref = scores[0].numpy()
        ours = sampler(
            do_sample=True,
            repetition_penalty=penalty,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        ).process(logits, generated)
        kept = np.isfinite(ref)
        diff = np.abs(ref[kept] - ours[kept]).max()
        print(f"case {case}: {kept.sum()} kept, max |HF - ours| = {diff}")
        assert np.array_equal(kept, np.isfinite(ours))
        assert diff <= 1e-6


QWEN_JSON = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.1,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "transformers_version": "4.37.0",
}


def test_from_dict_reads_hf_names():
    cfg = GenerationConfig.from_dict(QWEN_JSON)
    assert cfg.do_sample and cfg.temperature == 0.7 and cfg.top_k == 20 and cfg.top_p == 0.8
    assert cfg.eos_token_ids == (151645, 151643) and cfg.repetition_penalty == 1.1
    assert cfg.max_new_tokens == 1024


def test_from_dict_overrides_and_greedy():
    cfg = GenerationConfig.from_dict(QWEN_JSON, temperature=0, top_p=None, max_new_tokens=16)
    assert not cfg.do_sample and cfg.greedy  # temperature 0 means greedy
    assert cfg.repetition_penalty == 1.1 and cfg.max_new_tokens == 16 and cfg.top_p == 0.8
    cfg = GenerationConfig.from_dict({"eos_token_id": 2})
    assert cfg.eos_token_ids == (2,) and cfg.top_k == 50 and not cfg.do_sample  # HF defaults


@pytest.mark.parametrize(
    "bad",
    [
        {"top_p": 0},
        {"top_p": 1.5},
        {"temperature": -1},
        {"temperature": float("nan")},
        {"repetition_penalty": 0},
        {"max_new_tokens": 0},
        {"top_k": -1},
        {"eos_token_id": []},
        {"do_sample": "yes"},
    ],
)
def test_bad_values_raise_one_line(bad):
    with pytest.raises(MvgptError) as info:
        GenerationConfig.from_dict(bad)
    assert "\n" not in str(info.value)


def test_unknown_override_is_an_error():
    with pytest.raises(MvgptError, match="topk"):
        GenerationConfig.from_dict({}, topk=5)


def test_runtime_input_side_never_imports_torch():
    code = (
        "import sys\n"
        "import mvgpt.runtime.video, mvgpt.runtime.preprocess\n"
        "import mvgpt.runtime.prompt, mvgpt.runtime.sampling\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
