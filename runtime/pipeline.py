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
is allocated once per answer: per layer two flat buffers that take turns. The decoder reads the
past as a contiguous view of one and, through IOBinding, writes its present (past + new) straight
into the other, so no token allocates or copies the cache in numpy. A Pipeline is not
thread-safe: use one per thread.
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

PREFILL_CHUNK = 256  # positions per prefill run (older packages: rows of the logits buffer)
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
    """Fixed-capacity key/value cache of every decoder layer (see the module docstring)."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, capacity: int) -> None:
        self.kv_heads, self.head_dim, self.capacity = kv_heads, head_dim, capacity
        size = kv_heads * capacity * head_dim
        self._buffers = np.empty((2, num_layers, 2, size), np.float32)  # (turn, layer, k|v, -)
        self._turn = 0
        self.length = 0

    def _view(self, turn: int, layer: int, kind: int, length: int) -> np.ndarray:
        flat = self._buffers[turn, layer, kind, : self.kv_heads * length * self.head_dim]
        return flat.reshape(1, self.kv_heads, length, self.head_dim)

    def past(self, layer: int, kind: int) -> np.ndarray:
        return self._view(self._turn, layer, kind, self.length)

    def next(self, layer: int, kind: int, length: int) -> np.ndarray:
        return self._view(1 - self._turn, layer, kind, length)

    def advance(self, length: int) -> None:
        self._turn, self.length = 1 - self._turn, length

    def snapshot(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        layers = range(self._buffers.shape[1])
        return [self.past(i, 0).copy() for i in layers], [self.past(i, 1).copy() for i in layers]

    def load(self, keys: list[np.ndarray], values: list[np.ndarray]) -> None:
        self.length = keys[0].shape[2]
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            self.past(i, 0)[...] = k
            self.past(i, 1)[...] = v


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
        self._logits: np.ndarray | None = None
        optional = man[M.K_STAGES][M.DECODER].get(M.S_OPTIONAL_INPUTS, [])
        self._keeps_last_logits = any(t[M.S_NAME] == M.NUM_LOGITS_TO_KEEP for t in optional)
        layers = int(self.decoder_cfg["num_hidden_layers"])
        self._past_names = [(M.past_key_name(i), M.past_value_name(i)) for i in range(layers)]
        self._present_names = [
            (M.present_key_name(i), M.present_value_name(i)) for i in range(layers)
        ]
        self._present_flat = [name for pair in self._present_names for name in pair]

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

    def _step(self, embeds: np.ndarray, cache: KVCache) -> np.ndarray:
        """Run the decoder on (1, S, H) embeds after the cached past; returns the last logits.

        One token: IOBinding writes the new keys/values straight into the cache's spare buffer.
        A prefill chunk: a plain run that asks for the last position's logits only (the
        optional ``num_logits_to_keep`` input, when the package has it), copied into the cache.
        """
        length = embeds.shape[1]
        start, total = cache.length, cache.length + length
        if total > cache.capacity:
            raise MvgptError(
                f"KV cache: expected at most {cache.capacity} positions, got {total}; fix: "
                "lower max_new_tokens"
            )
        session = self.package.sessions[M.DECODER]
        feeds = {
            "inputs_embeds": np.ascontiguousarray(embeds, dtype=np.float32),
            "attention_mask": np.ones((1, total), np.int64),
            "position_ids": np.arange(start, total, dtype=np.int64)[None],
        }
        for layer, names in enumerate(self._past_names):
            for kind, name in enumerate(names):
                feeds[name] = cache.past(layer, kind)
        if length > 1 and self._keeps_last_logits:
            feeds[M.NUM_LOGITS_TO_KEEP] = np.array(1, np.int64)
            outputs = session.run(["logits", *self._present_flat], feeds)
            for i, present in enumerate(outputs[1:]):
                cache.next(i // 2, i % 2, total)[...] = present
            cache.advance(total)
            return outputs[0][0, -1]
        vocab = int(self.decoder_cfg["vocab_size"])
        if self._logits is None:  # one row when prefill chunks take the run() path above
            rows = 1 if self._keeps_last_logits else PREFILL_CHUNK
            self._logits = np.empty(rows * vocab, np.float32)
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for layer, names in enumerate(self._present_names):
            for kind, name in enumerate(names):
                present = ort.OrtValue.ortvalue_from_numpy(cache.next(layer, kind, total))
                binding.bind_ortvalue_output(name, present)
        logits = self._logits[: length * vocab].reshape(1, length, vocab)
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        session.run_with_iobinding(binding)
        cache.advance(total)
        return logits[0, -1]

    def _prefill(self, embeds: np.ndarray, cache: KVCache) -> np.ndarray:
        logits = None
        for start in range(0, embeds.shape[1], PREFILL_CHUNK):
            logits = self._step(embeds[:, start : start + PREFILL_CHUNK], cache)
        return logits

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
        cache = KVCache(
            len(self._past_names),
            int(self.decoder_cfg["num_key_value_heads"]),
            int(self.decoder_cfg["head_dim"]),
            prompt_length + limit,
        )
        prefix = encoding.prefix
        if (
            prefix is not None
            and prefix.owner is self._identity
            and np.array_equal(prefix.ids, prefix_ids)
        ):
            cache.load(prefix.keys, prefix.values)
        else:
            embeds = np.concatenate([self._embed(prefix_ids), encoding.visual[None]], axis=1)
            self._prefill(embeds, cache)
            keys, values = cache.snapshot()
            encoding.prefix = _Prefix(self._identity, np.array(prefix_ids), keys, values)
        logits = self._prefill(self._embed(suffix_ids), cache)
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
            logits = self._step(self._embed([token]), cache)
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
