"""The decoder engines bench_decoder.py compares, behind one interface, and the folders they need.

Each engine answers ``prefill(ids) -> (seconds, state)`` (prompt forward + first greedy token) and
``step(state) -> seconds`` (one more token: one forward on the last token + greedy pick):

- ``TransformersEngine``: transformers Qwen2ForCausalLM, eager PyTorch, fp32 or bf16; the
  prefill asks for the last position's logits only (``logits_to_keep=1``), as ``generate`` does.
- ``OnnxEngine``: a package's embed_tokens.onnx + decoder.onnx run by the runtime's ``Decoder``
  (prefill in chunks, one preallocated KV cache written in place).
- ``GenaiEngine``: onnxruntime-genai on a model its builder made (int4, CPU).

``write_hf_folder`` writes the package's Qwen2 weights as a Hugging Face Qwen2ForCausalLM folder
(config, safetensors, tokenizer) from the random checkpoint; ``build_genai`` runs the builder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_hf_folder(checkpoint_dir: Path, clip_dir: Path, out: Path) -> dict[str, np.ndarray]:
    """Write a Qwen2ForCausalLM folder (fp16, as the checkpoint stores it); return a few of its
    weights (fp32 numpy) for the same-weights check."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mvgpt.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint_dir, clip_dir)
    q = ckpt.config.qwen
    config = Qwen2Config(
        vocab_size=q.vocab_size,
        hidden_size=q.hidden_size,
        intermediate_size=q.intermediate_size,
        num_hidden_layers=q.num_hidden_layers,
        num_attention_heads=q.num_attention_heads,
        num_key_value_heads=q.num_key_value_heads,
        max_position_embeddings=q.max_position_embeddings,
        rope_theta=q.rope_theta,
        rms_norm_eps=q.rms_norm_eps,
        tie_word_embeddings=q.tie_word_embeddings,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        architectures=["Qwen2ForCausalLM"],
    )
    model = Qwen2ForCausalLM(config)
    state = {"model." + k: v for k, v in ckpt.qwen.items()}
    if q.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"Qwen2ForCausalLM weights: missing {missing}, unexpected {unexpected}")
    model.to(torch.float16).save_pretrained(out)
    shutil.copy(checkpoint_dir / "tokenizer.json", out / "tokenizer.json")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": q.max_position_embeddings,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return {"embed_tokens.weight": ckpt.qwen["embed_tokens.weight"][:8].float().numpy()}


def build_genai(hf_dir: Path, out: Path, precision: str = "int4") -> None:
    """Run onnxruntime-genai's model builder on a Hugging Face folder (CPU)."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir)]
    command += ["-o", str(out), "-p", precision, "-e", "cpu", "-c", str(out.parent / "cache")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        raise RuntimeError(f"onnxruntime-genai builder failed (exit {done.returncode}): {tail}")


class TransformersEngine:
    def __init__(self, hf_dir: Path, dtype: str, threads: int, attn: str) -> None:
        import torch
        from transformers import Qwen2ForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        self.model = Qwen2ForCausalLM.from_pretrained(
            hf_dir, dtype=torch_dtype, attn_implementation=attn
        ).eval()

    def prefill(self, ids: np.ndarray) -> tuple[float, dict]:
        torch = self.torch
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model(torch.from_numpy(ids)[None], use_cache=True, logits_to_keep=1)
            token = out.logits[0, -1].argmax()
        seconds = time.perf_counter() - start
        return seconds, {"cache": out.past_key_values, "token": token}

    def step(self, state: dict) -> float:
        torch = self.torch
        start = time.perf_counter()
        with torch.inference_mode():
            ids = state["token"].reshape(1, 1)
            out = self.model(ids, past_key_values=state["cache"], use_cache=True)
            state["token"] = out.logits[0, -1].argmax()
        state["cache"] = out.past_key_values
        return time.perf_counter() - start


class OnnxEngine:
    """The runtime's own decoder path (``mvgpt.runtime.decoder.Decoder``): one preallocated KV
    cache per prompt, bound as past and present, last-position logits only. ``portable``: the
    package's decoder without mvgpt ops (onnxruntime's GroupQueryAttention kernel)."""

    def __init__(
        self,
        folder: Path,
        manifest: dict,
        threads: int,
        chunk: int,
        capacity: int,
        portable: bool = False,
    ) -> None:
        import onnxruntime as ort

        from mvgpt.runtime import manifest as M
        from mvgpt.runtime.decoder import PREFILL_CHUNK, Decoder
        from mvgpt.runtime.package import stage_io
        from mvgpt.runtime.sessions import session_options

        stages = manifest[M.K_STAGES]
        self.embed = ort.InferenceSession(
            str(folder / stages[M.EMBED_TOKENS][M.S_FILE]),
            session_options(threads),
            ["CPUExecutionProvider"],
        )
        entry = stages[M.DECODER]
        file = entry[M.S_PORTABLE_FILE] if portable else entry[M.S_FILE]
        op = None if portable else M.CUSTOM_OP_STAGES[M.DECODER]
        session = ort.InferenceSession(
            str(folder / file), session_options(threads, custom_op=op), ["CPUExecutionProvider"]
        )
        self.decoder = Decoder(session, manifest["decoder"], stage_io(manifest, M.DECODER))
        self.chunk = chunk or PREFILL_CHUNK
        self.capacity = capacity  # KV cache positions: prompt + decoded tokens

    def embeddings(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(1, -1)
        return self.embed.run(["inputs_embeds"], {"input_ids": ids})[0]

    def prefill(self, ids: np.ndarray) -> tuple[float, dict]:
        start_time = time.perf_counter()
        cache = self.decoder.new_cache(max(self.capacity, len(ids) + 1))
        embeds = self.embeddings(ids)
        token = int(np.argmax(self.decoder.prefill(embeds, cache, self.chunk)))
        return time.perf_counter() - start_time, {"cache": cache, "token": token}

    def step(self, state: dict) -> float:
        start_time = time.perf_counter()
        logits = self.decoder.run(self.embeddings([state["token"]]), state["cache"])
        state["token"] = int(np.argmax(logits))
        return time.perf_counter() - start_time


class GenaiEngine:
    def __init__(self, folder: Path, threads: int, max_length: int) -> None:
        import onnxruntime_genai as og

        config_path = folder / "genai_config.json"
        config = json.loads(config_path.read_text())
        options = config["model"]["decoder"].setdefault("session_options", {})
        options.update({"intra_op_num_threads": threads, "inter_op_num_threads": 1})
        config_path.write_text(json.dumps(config, indent=4))
        self.og, self.model, self.max_length = og, og.Model(str(folder)), max_length

    def prefill(self, ids: np.ndarray) -> tuple[float, dict]:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.max_length, do_sample=False)
        start = time.perf_counter()
        generator = og.Generator(self.model, params)
        generator.append_tokens(np.asarray(ids, np.int32)[None])
        generator.generate_next_token()  # picks from the prefill's logits
        return time.perf_counter() - start, {"generator": generator}

    def step(self, state: dict) -> float:
        start = time.perf_counter()
        state["generator"].generate_next_token()  # one forward on the last token, then pick
        return time.perf_counter() - start
