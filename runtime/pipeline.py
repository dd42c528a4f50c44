"""``Pipeline``: a model package's graphs chained with numpy glue, video -> Encoding -> Answer.

- ``encode``: decode and sample 16 frames -> preprocess both streams -> clip_vision ->
  frame_scorer -> top-k frames per chunk, kept in time order -> video_mamba on those 8 frames ->
  image and video projectors -> the (2402, H) visual embeddings. An Encoding can answer many
  questions; the vision stages run once.
- ``answer``: ChatML prompt ids -> embed_tokens -> [prefix, visual, suffix] -> decoder prefill in
  chunks, then one cached step per token, chosen by ``Sampler`` (greedy by default), streamed as
  text. The prefill of the question-independent part (system prompt + visual embeddings) is kept
  on the Encoding and reused by later questions.

The KV cache has a fixed capacity (prompt + max_new_tokens, at most max_position_embeddings) and
is allocated once per answer: one buffer per layer for keys and one for values. Every decoder run
binds each buffer (IOBinding) as both its past input and its present output; the decoder's
GroupQueryAttention sees the same memory and writes the new positions in place, so no token
allocates or copies the cache. A Pipeline is not thread-safe: use one per thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import manifest as M
from .errors import MvgptError
from .package import Package, load_package
from .preprocess import preprocess_clip, preprocess_video_mamba
from .prompt import decode_answer, prompt_ids, split_visual
from .sampling import GenerationConfig, Sampler
from .textstream import TextStream
from .video import pad_positions, read_frames, sample_positions

log = logging.getLogger(__name__)

PREFILL_CHUNK = 256  # positions per prefill run: bounds the attention scores' memory
ENCODE_STAGES = ("decode_video", "clip_vision", "frame_scorer", "video_mamba", "projectors")


@dataclass
class _Prefix:
    """The decoder's KV cache after [prompt prefix, visual], for reuse by later questions."""

    owner: object  # the Pipeline's identity token
    ids: np.ndarray
    keys: list[np.ndarray]  # per layer (1, kv_heads, P, head_dim)
    values: list[np.ndarray]


@dataclass
class Encoding:
    """A video after the vision stages: what every question about it shares."""

    visual: np.ndarray  # (num_visual_tokens, H) float32: CLIP tokens, then VideoMamba tokens
    frame_indices: list[int]  # source frame of each of the num_frames sampled frames
    selected_frames: list[int]  # positions (in the sampled frames) kept for VideoMamba
    seconds: dict[str, float]
    prefix: _Prefix | None = field(default=None, repr=False, compare=False)


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    frame_indices: list[int]
    selected_frames: list[int]
    seconds: dict[str, float]  # ENCODE_STAGES (0.0 when the encoding was reused), prefill, decode
    ttft_s: float  # answer() call to the first generated token
    decode_tokens_per_s: float | None  # None when no decoder step ran after the first token
    encoding_reused: bool


class KVCache:
    """Fixed-capacity key/value cache of every decoder layer (see the module docstring): positions
    ``[0, length)`` of each (1, kv_heads, capacity, head_dim) buffer are in use."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, capacity: int) -> None:
        self.capacity = capacity
        self._buffers = np.zeros((num_layers, 2, 1, kv_heads, capacity, head_dim), np.float32)
        # the OrtValues wrap the numpy memory: binding them never copies
        self.values = [
            [ort.OrtValue.ortvalue_from_numpy(self._buffers[layer, kind]) for kind in (0, 1)]
            for layer in range(num_layers)
        ]
        self.length = 0

    def in_use(self, layer: int, kind: int) -> np.ndarray:
        return self._buffers[layer, kind, :, :, : self.length]

    def snapshot(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        layers = range(self._buffers.shape[0])
        keys, values = ([self.in_use(i, kind).copy() for i in layers] for kind in (0, 1))
        return keys, values

    def load(self, keys: list[np.ndarray], values: list[np.ndarray]) -> None:
        self.length = keys[0].shape[2]
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            self.in_use(i, 0)[...] = k
            self.in_use(i, 1)[...] = v


class Decoder:
    """The decoder session run the runtime's way: each call binds the KV cache's buffers as past
    and present (written in place) and gets the last position's logits only."""

    def __init__(self, session: ort.InferenceSession, decoder_cfg: dict) -> None:
        self.session = session
        self.layers = int(decoder_cfg["num_hidden_layers"])
        self.kv_heads = int(decoder_cfg["num_key_value_heads"])
        self.head_dim = int(decoder_cfg["head_dim"])
        self._names = [
            (
                (M.past_key_name(i), M.present_key_name(i)),
                (M.past_value_name(i), M.present_value_name(i)),
            )
            for i in range(self.layers)
        ]
        self._logits = np.empty((1, 1, int(decoder_cfg["vocab_size"])), np.float32)
        self._logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits)
        self._keep_last = np.array(1, np.int64)

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.layers, self.kv_heads, self.head_dim, capacity)

    def step(self, embeds: np.ndarray, cache: KVCache) -> np.ndarray:
        """Run (1, S, H) embeds after the cached positions; returns the last position's (V,)
        logits (a view, overwritten by the next call)."""
        length = embeds.shape[1]
        total = cache.length + length
        if total > cache.capacity:
            raise MvgptError(
                f"KV cache: expected at most {cache.capacity} positions, got {total}; fix: "
                "lower max_new_tokens"
            )
        binding = self.session.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=np.float32))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        binding.bind_cpu_input(M.NUM_LOGITS_TO_KEEP, self._keep_last)
        for layer, names in enumerate(self._names):
            for kind, (past, present) in enumerate(names):
                value = cache.values[layer][kind]
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
        binding.bind_ortvalue_output("logits", self._logits_value)
        self.session.run_with_iobinding(binding)
        cache.length = total
        return self._logits[0, -1]

    def prefill(self, embeds: np.ndarray, cache: KVCache, chunk: int = PREFILL_CHUNK) -> np.ndarray:
        """``step`` over (1, S, H) in runs of ``chunk`` positions."""
        logits = None
        for start in range(0, embeds.shape[1], chunk):
            logits = self.step(embeds[:, start : start + chunk], cache)
        return logits


class Pipeline:
    """Answers questions about videos with one loaded model package."""

    def __init__(self, package: Package) -> None:
        self.package = package
        man = package.manifest
        self.sampling = man[M.K_SAMPLING]
        self.prompt = man[M.K_PROMPT]
        self.decoder_cfg = man[M.K_DECODER]
        self.num_visual_tokens = int(man[M.K_VISUAL]["num_visual_tokens"])
        self.notes = list(package.notes)
        self._identity = object()
        self.decoder = Decoder(package.sessions[M.DECODER], self.decoder_cfg)

    @classmethod
    def load(
        cls, package: str | Path, provider: str = "cpu", threads: int | None = None
    ) -> Pipeline:
        """Open a package folder (see ``package.load_package``); notes are logged as warnings."""
        pipeline = cls(load_package(package, provider, threads))
        for note in pipeline.notes:
            log.warning("%s", note)
        return pipeline

    @property
    def tokenizer(self):
        return self.package.tokenizer

    def _run(self, stage: str, output: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.package.sessions[stage].run([output], inputs)[0]

    # ------------------------------------------------------------------ vision

    def _frames(self, video: str | Path | np.ndarray) -> tuple[np.ndarray, list[int]]:
        num_frames = int(self.sampling["num_frames"])
        if isinstance(video, (str, Path)):
            return read_frames(video, num_frames)
        if isinstance(video, np.ndarray):
            if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
                raise MvgptError(
                    f"video array: expected (F, H, W, 3) uint8 RGB frames, got shape "
                    f"{video.shape} dtype {video.dtype}; fix: pass decoded RGB frames"
                )
            # frames in memory have no frame rate: each counts as one second
            positions = sample_positions(video.shape[0], 1.0, num_frames)
            positions = pad_positions(positions, num_frames)
            return video[positions], positions
        raise MvgptError(
            f"video: expected a file path or an (F, H, W, 3) uint8 array, got "
            f"{type(video).__name__}; fix: pass a path or frames"
        )

    def encode(self, video: str | Path | np.ndarray) -> Encoding:
        """Run the vision stages once; the Encoding answers any number of questions."""
        seconds: dict[str, float] = {}
        pre = self.package.manifest[M.K_PREPROCESS]
        t0 = time.perf_counter()
        frames, positions = self._frames(video)
        clip_pre, mamba_pre = pre["clip"], pre["video_mamba"]
        clip_pixels = preprocess_clip(
            frames, clip_pre[M.P_SIZE], tuple(clip_pre[M.P_MEAN]), tuple(clip_pre[M.P_STD])
        )
        mamba_pixels = preprocess_video_mamba(
            frames, mamba_pre[M.P_SIZE], tuple(mamba_pre[M.P_MEAN]), tuple(mamba_pre[M.P_STD])
        )
        t1 = time.perf_counter()
        seconds["decode_video"] = t1 - t0

        features = self._run(M.CLIP_VISION, "image_features", {"pixel_values": clip_pixels})
        t2 = time.perf_counter()
        seconds["clip_vision"] = t2 - t1  # features: (F, P, C)

        chunk = int(self.sampling["chunk_size"])
        keep = int(self.sampling["num_select_k_frames_in_chunk"])
        num_frames, patches, dim = features.shape
        chunks = features.reshape(num_frames // chunk, chunk * patches, dim)
        scores = self._run(M.FRAME_SCORER, "frame_scores", {"image_features": chunks})
        selected = select_frames(scores, keep)  # (num_chunks * keep,) time order
        t3 = time.perf_counter()
        seconds["frame_scorer"] = t3 - t2

        clip = np.ascontiguousarray(mamba_pixels[selected].transpose(1, 0, 2, 3)[None])
        video_features = self._run(M.VIDEO_MAMBA, "video_features", {"pixel_values": clip})
        t4 = time.perf_counter()
        seconds["video_mamba"] = t4 - t3  # video_features: (8, P, 576)

        image_tokens = self._run(M.IMAGE_PROJECTOR, "image_tokens", {"image_features": features})
        video_tokens = self._run(
            M.VIDEO_PROJECTOR, "video_tokens", {"video_features": video_features}
        )
        hidden = image_tokens.shape[-1]  # (F, 144, H) and (chunks, 49, H)
        visual = np.concatenate(
            [image_tokens.reshape(-1, hidden), video_tokens.reshape(-1, hidden)]
        )
        seconds["projectors"] = time.perf_counter() - t4
        if visual.shape[0] != self.num_visual_tokens:
            raise MvgptError(
                f"visual embeddings: expected {self.num_visual_tokens} (manifest), got "
                f"{visual.shape[0]}; fix: re-export the package"
            )
        return Encoding(
            visual=np.ascontiguousarray(visual, dtype=np.float32),
            frame_indices=[int(p) for p in positions],
            selected_frames=[int(s) for s in selected],
            seconds=seconds,
        )

    # ------------------------------------------------------------------ language

    def generation_config(self, **overrides: object) -> GenerationConfig:
        """The manifest's generation config, greedy unless a temperature > 0 is given; eos ids
        are the manifest's plus <|im_end|>."""
        base = dict(self.package.manifest[M.K_GENERATION])
        eos = base.get("eos_token_id", [])
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        im_end = self.package.manifest[M.K_TOKENS].get("im_end")
        eos += [im_end] if im_end is not None and im_end not in eos else []
        return GenerationConfig.official(
            base, eos_token_ids=tuple(t for t in eos if t is not None), **overrides
        )

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        return self._run(M.EMBED_TOKENS, "inputs_embeds", {"input_ids": ids})  # (1, S, H)

    def answer(
        self,
        video: str | Path | np.ndarray | Encoding,
        question: str,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer `question` about a video (path, frames, or an Encoding from ``encode``)."""
        start = time.perf_counter()
        ids = prompt_ids(  # checks the question before any heavy work
            self.tokenizer,
            question,
            int(self.prompt["num_image_placeholders"]),
            int(self.prompt["num_image_sentinels"]),
            self.prompt.get("system", "You are a helpful assistant."),
        )
        gen = self.generation_config(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            repetition_penalty=repetition_penalty,
        )
        reused = isinstance(video, Encoding)
        encoding = video if reused else self.encode(video)
        seconds = {k: 0.0 if reused else encoding.seconds.get(k, 0.0) for k in ENCODE_STAGES}

        t0 = time.perf_counter()
        prefix_ids, suffix_ids = split_visual(ids)
        prompt_length = len(prefix_ids) + self.num_visual_tokens + len(suffix_ids)
        limit = gen.max_new_tokens
        max_positions = self.decoder_cfg.get("max_position_embeddings")
        if max_positions:
            if prompt_length >= max_positions:
                raise MvgptError(
                    f"prompt too long: expected fewer than {max_positions} positions, got "
                    f"{prompt_length}; fix: ask a shorter question"
                )
            limit = min(limit, max_positions - prompt_length)
        cache = self.decoder.new_cache(prompt_length + limit)
        prefix = encoding.prefix
        if (
            prefix is not None
            and prefix.owner is self._identity
            and np.array_equal(prefix.ids, prefix_ids)
        ):
            cache.load(prefix.keys, prefix.values)
        else:
            embeds = np.concatenate([self._embed(prefix_ids), encoding.visual[None]], axis=1)
            self.decoder.prefill(embeds, cache)
            keys, values = cache.snapshot()
            encoding.prefix = _Prefix(self._identity, np.array(prefix_ids), keys, values)
        logits = self.decoder.prefill(self._embed(suffix_ids), cache)
        t1 = time.perf_counter()
        seconds["prefill"] = t1 - t0

        sampler = Sampler(gen)
        stream = TextStream(self.tokenizer, on_text) if on_text is not None else None
        generated: list[int] = []
        ttft = None
        steps, step_seconds = 0, 0.0
        while len(generated) < limit:
            token = sampler.next_token(logits, generated)
            if sampler.is_eos(token):
                break
            generated.append(token)
            if ttft is None:
                ttft = time.perf_counter() - start
            if stream is not None:
                stream.push(token)
            if len(generated) == limit:
                break
            t_step = time.perf_counter()
            logits = self.decoder.step(self._embed([token]), cache)
            steps, step_seconds = steps + 1, step_seconds + time.perf_counter() - t_step
        if stream is not None:
            stream.finish()
        seconds["decode"] = time.perf_counter() - t1
        return Answer(
            text=decode_answer(self.tokenizer, generated),
            token_ids=generated,
            frame_indices=list(encoding.frame_indices),
            selected_frames=list(encoding.selected_frames),
            seconds=seconds,
            ttft_s=ttft if ttft is not None else time.perf_counter() - start,
            decode_tokens_per_s=steps / step_seconds if steps and step_seconds > 0 else None,
            encoding_reused=reused,
        )


def select_frames(scores: np.ndarray, keep: int) -> np.ndarray:
    """Top-`keep` largest scores per chunk, in time order, as global frame positions.

    scores (num_chunks, chunk_size) -> (num_chunks * keep,) int64; ties go to the earlier frame.
    """
    num_chunks, chunk_size = scores.shape
    top = np.argsort(-scores, axis=-1, kind="stable")[:, :keep]
    top = np.sort(top, axis=-1) + np.arange(num_chunks)[:, None] * chunk_size
    return top.reshape(-1).astype(np.int64)
