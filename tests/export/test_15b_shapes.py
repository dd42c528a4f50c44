"""Mobile-VideoGPT-1.5B's shapes (issue 18): a random checkpoint in the official layout at the
1.5B widths (hidden 1536, intermediate 8960, 12 heads, 2 KV heads, vocab 151936; CLIP and
VideoMamba-M at their real sizes) with the decoder cut to 2 layers, exported to an fp32 package;
the package's decoder, run the runtime's way (prefill, then cached steps), gives the logits of
transformers' Qwen2ForCausalLM holding the same weights. Slow (a real-width export, ~3-5 minutes
on 2 cores): deselect with -m "not slow"."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

LAYERS = 2
PROMPT = 40
STEPS = 4


@pytest.fixture(scope="module")
def checkpoint_15b(tmp_path_factory):
    from mvgpt.models.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("r15b"), "1.5b", seed=1, layers=LAYERS)


def test_15b_shaped_decoder_matches_transformers(checkpoint_15b, tmp_path):
    from mvgpt.exporter.package import export_package
    from mvgpt.models.checkpoint import load_checkpoint
    from mvgpt.models.mobile_videogpt import MobileVideoGPT
    from mvgpt.runtime import Pipeline
    from tests.parity.test_qwen2_parity import hf_twin

    out = tmp_path / "pkg15b"
    for check in export_package(*checkpoint_15b, out):
        print(f"{check.file:<28} max|diff| {check.max_abs_diff:.3e}")
    pipeline = Pipeline.load(out, threads=2)
    cfg = pipeline.decoder_cfg
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (1536, 2, 151936)

    checkpoint = load_checkpoint(*checkpoint_15b)
    decoder = MobileVideoGPT.from_checkpoint(checkpoint).decoder
    qwen = decoder.cfg
    hf = hf_twin(decoder)
    del checkpoint, decoder

    rng = np.random.default_rng(0)
    ids = rng.integers(0, qwen.vocab_size, size=PROMPT)
    cache = pipeline.decoder.new_cache(PROMPT + STEPS)
    got = [pipeline.decoder.prefill(pipeline._embed(ids), cache).copy()]
    with torch.no_grad():
        out_hf = hf(input_ids=torch.as_tensor(ids)[None], use_cache=True)
        want = [out_hf.logits[0, -1].numpy()]
        past = out_hf.past_key_values
        token = int(np.argmax(want[0]))
        for _ in range(STEPS - 1):
            got.append(pipeline.decoder.run(pipeline._embed([token]), cache).copy())
            out_hf = hf(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = out_hf.past_key_values
            want.append(out_hf.logits[0, -1].numpy())
            token = int(np.argmax(want[-1]))
    for step, (a, b) in enumerate(zip(got, want, strict=True)):
        diff = float(np.abs(a - b).max())
        scale = float(np.abs(b).max())
        print(f"step {step}: max|diff| {diff:.3e} (logit scale {scale:.2f})")
        assert diff <= 1e-3 * max(1.0, scale)
        assert int(np.argmax(a)) == int(np.argmax(b))
