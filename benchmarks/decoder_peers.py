"""The decoder engines bench_decoder.py compares, behind one interface, and the folders they need.

Each engine answers ``prefill(ids) -> (seconds, state)`` (prompt forward + first greedy token) and
``step(state) -> seconds`` (one more token: one forward on the last token + greedy pick):

- ``TransformersEngine``: transformers Qwen2ForCausalLM, eager PyTorch, fp32 or bf16; the
  prefill asks for the last position's logits only (``logits_to_keep=1``), as ``generate`` does.
- ``OnnxEngine``: a package's embed_tokens.onnx + decoder.onnx, prefill in the runtime's chunks,
  each step's presents fed back as the next past through IOBinding (no numpy copies).
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
    def __init__(self, folder: Path, manifest: dict, threads: int, chunk: int) -> None:
        import onnxruntime as ort

        self.ort = ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        stages = manifest["stages"]
        self.embed = ort.InferenceSession(
            str(folder / stages["embed_tokens"]["file"]), options, ["CPUExecutionProvider"]
        )
        self.decoder = ort.InferenceSession(
            str(folder / stages["decoder"]["file"]), options, ["CPUExecutionProvider"]
        )
        dec = manifest["decoder"]
        self.layers, self.kv_heads = int(dec["num_hidden_layers"]), int(dec["num_key_value_heads"])
        self.head_dim, self.chunk = int(dec["head_dim"]), chunk
        self.past = [
            f"past_key_values.{i}.{k}" for i in range(self.layers) for k in ("key", "value")
        ]
        self.present = [n.replace("past_key_values", "present") for n in self.past]
        optional = stages["decoder"].get("optional_inputs", [])
        self.keep_last = any(t["name"] == "num_logits_to_keep" for t in optional)

    def embeddings(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(1, -1)
        return self.embed.run(["inputs_embeds"], {"input_ids": ids})[0]

    def _run(self, embeds: np.ndarray, start: int, past: list) -> tuple[np.ndarray, list]:
        """One decoder run on (1, S, H) after `start` cached positions; past are OrtValues."""
        total = start + embeds.shape[1]
        if embeds.shape[1] > 1 and self.keep_last:  # a prefill chunk: the last logits only
            value = self.ort.OrtValue.ortvalue_from_numpy
            feeds = {
                "inputs_embeds": value(np.ascontiguousarray(embeds)),
                "attention_mask": value(np.ones((1, total), np.int64)),
                "position_ids": value(np.arange(start, total, dtype=np.int64)[None]),
                "num_logits_to_keep": value(np.array(1, np.int64)),
                **dict(zip(self.past, past, strict=True)),
            }
            outputs = self.decoder.run_with_ort_values(["logits", *self.present], feeds)
            return outputs[0].numpy()[0, -1], list(outputs[1:])
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        binding.bind_cpu_input("position_ids", np.arange(start, total, dtype=np.int64)[None])
        for name, value in zip(self.past, past, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name in ["logits", *self.present]:
            binding.bind_output(name, "cpu")
        self.decoder.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy()[0, -1], list(outputs[1:])

    def prefill(self, ids: np.ndarray) -> tuple[float, dict]:
        start_time = time.perf_counter()
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)
        past = [self.ort.OrtValue.ortvalue_from_numpy(empty) for _ in self.past]
        embeds = self.embeddings(ids)
        step = self.chunk or len(ids)
        for start in range(0, len(ids), step):
            logits, past = self._run(embeds[:, start : start + step], start, past)
        token = int(np.argmax(logits))
        return time.perf_counter() - start_time, {"past": past, "token": token, "length": len(ids)}

    def step(self, state: dict) -> float:
        start_time = time.perf_counter()
        embeds = self.embeddings([state["token"]])
        logits, state["past"] = self._run(embeds, state["length"], state["past"])
        state["token"], state["length"] = int(np.argmax(logits)), state["length"] + 1
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
