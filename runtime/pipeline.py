"""``Pipeline``: a model package's graphs chained with numpy glue, video -> Encoding -> Answer.

- ``encode``: decode and sample 16 frames -> preprocess both streams -> clip_vision ->
  frame_scorer -> top-k frames per chunk, kept in time order -> video_mamba on those 8 frames ->
  image and video projectors -> the (2402, H) visual embeddings. An Encoding can answer many
  questions; the vision stages run once.
- ``answer``: ChatML prompt ids -> embed_tokens -> [prefix, visual, suffix] -> decoder prefill in
  chunks, then one cached step per token, chosen by ``Sampler`` (greedy by default), streamed as
  text (the decoder, its KV cache and the decode loop: decoder.py). The pipeline keeps the KV
  cache of the question-independent part (system prompt + visual embeddings) of each Encoding
  it answered, as long as the caller keeps that Encoding: a later question about it prefills
  only its own tokens (``Answer.encoding_reused``).

The KV cache's capacity is the prompt + max_new_tokens, at most max_position_embeddings.
Encodings and Answers are read-only. A Pipeline is not thread-safe: use one per thread.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from . import manifest as M
from .decoder import Decoder, KVCache, decode_loop
from .errors import MvgptError
from .package import CACHE_DEVICES, Package, load_package
from .preprocess import preprocess_clip, preprocess_video_mamba
from .prompt import decode_answer, manifest_prompt_ids, split_visual
from .sampling import GenerationConfig, Sampler
from .textstream import TextStream
from .video import pad_positions, read_frames, sample_positions

log = logging.getLogger(__name__)

ENCODE_STAGES = ("decode_video", "clip_vision", "frame_scorer", "video_mamba", "projectors")


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, a key of Pipeline's cache
class Encoding:
    """A video after the vision stages: what every question about it shares (read-only)."""

    visual: np.ndarray  # (num_visual_tokens, H) float32, read-only: CLIP tokens, then VideoMamba's
    frame_indices: tuple[int, ...]  # source frame of each of the num_frames sampled frames
    selected_frames: tuple[int, ...]  # positions (in the sampled frames) kept for VideoMamba
    seconds: Mapping[str, float]  # ENCODE_STAGES


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: tuple[int, ...]
    frame_indices: tuple[int, ...]
    selected_frames: tuple[int, ...]
    seconds: Mapping[str, float]  # ENCODE_STAGES (0.0 when given an Encoding), prefill, decode
    ttft_s: float  # answer() call to the first generated token
    decode_tokens_per_s: float | None  # None when no decoder step ran after the first token
    encoding_reused: bool  # the Encoding's shared prefill came from an earlier answer's cache


@dataclass(frozen=True)
class _SharedPrefill:
    """The KV cache after [prompt prefix, visual] of one Encoding, for its later questions."""

    ids: np.ndarray  # the prompt prefix's token ids
    keys: tuple[np.ndarray, ...]  # per layer (1, kv_heads, P, head_dim)
    values: tuple[np.ndarray, ...]


class Pipeline:
    """Answers questions about videos with one loaded model package."""

    def __init__(self, package: Package) -> None:
        self.package = package
        man = package.manifest
        self.sampling = man[M.K_SAMPLING]
        self.prompt = man[M.K_PROMPT]
        self.decoder_cfg = man[M.K_DECODER]
        self.num_visual_tokens = int(man[M.K_VISUAL]["num_visual_tokens"])
        resize = man[M.K_PREPROCESS]["clip"].get(M.P_RESIZE, M.RESIZE_CLIP_CROP)
        if resize not in (M.RESIZE_CLIP_CROP, M.RESIZE_CLIP_SQUASH):
            raise MvgptError(
                f"{package.folder}: expected preprocess.clip.resize to be "
                f"{M.RESIZE_CLIP_CROP!r} or {M.RESIZE_CLIP_SQUASH!r}, got {resize!r}; fix: "
                "re-export the package with this version of mvgpt"
            )
        self.clip_center_crop = resize == M.RESIZE_CLIP_CROP
        self.notes = list(package.notes)
        self.decoder = Decoder(
            package.sessions[M.DECODER],
            self.decoder_cfg,
            package.io[M.DECODER],
            cache_device=CACHE_DEVICES.get(package.provider)
            if package.io[M.DECODER].cache_dtype == "float16"
            else None,
        )
        # this pipeline's prefills of the Encodings it answered; an entry goes with its Encoding
        self._shared: weakref.WeakKeyDictionary[Encoding, _SharedPrefill] = (
            weakref.WeakKeyDictionary()
        )

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
        """Run ``stage``: ``inputs`` and ``output`` by role (manifest R_*), bound to the graph's
        names the manifest gives them."""
        io = self.package.io[stage]
        feeds = {io.inputs[role]: value for role, value in inputs.items()}
        return self.package.sessions[stage].run([io.outputs[output]], feeds)[0]

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

    def preprocess(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F, H, W, 3) uint8 RGB -> both streams' model inputs: CLIP's and VideoMamba's
        (F, 3, size, size) float32 pixels."""
        pre = self.package.manifest[M.K_PREPROCESS]
        clip_pre, mamba_pre = pre["clip"], pre["video_mamba"]
        clip_pixels = preprocess_clip(
            frames,
            clip_pre[M.P_SIZE],
            tuple(clip_pre[M.P_MEAN]),
            tuple(clip_pre[M.P_STD]),
            center_crop=self.clip_center_crop,
        )
        mamba_pixels = preprocess_video_mamba(
            frames, mamba_pre[M.P_SIZE], tuple(mamba_pre[M.P_MEAN]), tuple(mamba_pre[M.P_STD])
        )
        return clip_pixels, mamba_pixels

    def clip_features(self, clip_pixels: np.ndarray) -> np.ndarray:
        """clip_vision: (F, 3, S, S) CLIP pixels -> (F, P, C) patch features."""
        return self._run(M.CLIP_VISION, M.R_IMAGE_FEATURES, {M.R_PIXEL_VALUES: clip_pixels})

    def encode(self, video: str | Path | np.ndarray) -> Encoding:
        """Run the vision stages once; the Encoding answers any number of questions."""
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        frames, positions = self._frames(video)
        clip_pixels, mamba_pixels = self.preprocess(frames)
        t1 = time.perf_counter()
        seconds["decode_video"] = t1 - t0
        features = self.clip_features(clip_pixels)
        seconds["clip_vision"] = time.perf_counter() - t1
        return self.encode_features(features, mamba_pixels, positions, seconds)

    def encode_features(
        self,
        features: np.ndarray,
        mamba_pixels: np.ndarray,
        positions: list[int] | tuple[int, ...],
        seconds: dict[str, float] | None = None,
    ) -> Encoding:
        """The vision stages after clip_vision: frame_scorer -> top-k frames per chunk ->
        video_mamba -> projectors, on the sampled frames' CLIP features (F, P, C) and VideoMamba
        pixels (F, 3, S, S); ``positions``: their source frame indices. A live stream
        (stream.py) computes the features one frame at a time, as frames arrive."""
        seconds = dict(seconds or {})
        t2 = time.perf_counter()
        chunk = int(self.sampling["chunk_size"])
        keep = int(self.sampling["num_select_k_frames_in_chunk"])
        num_frames, patches, dim = features.shape
        chunks = features.reshape(num_frames // chunk, chunk * patches, dim)
        scores = self._run(M.FRAME_SCORER, M.R_FRAME_SCORES, {M.R_IMAGE_FEATURES: chunks})
        selected = select_frames(scores, keep)  # (num_chunks * keep,) time order
        t3 = time.perf_counter()
        seconds["frame_scorer"] = t3 - t2

        clip = np.ascontiguousarray(mamba_pixels[selected].transpose(1, 0, 2, 3)[None])
        video_features = self._run(M.VIDEO_MAMBA, M.R_VIDEO_FEATURES, {M.R_PIXEL_VALUES: clip})
        t4 = time.perf_counter()
        seconds["video_mamba"] = t4 - t3  # video_features: (8, P, 576)

        image_tokens = self._run(
            M.IMAGE_PROJECTOR, M.R_IMAGE_TOKENS, {M.R_IMAGE_FEATURES: features}
        )
        video_tokens = self._run(
            M.VIDEO_PROJECTOR, M.R_VIDEO_TOKENS, {M.R_VIDEO_FEATURES: video_features}
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
        visual = np.ascontiguousarray(visual, dtype=np.float32)
        visual.flags.writeable = False
        return Encoding(
            visual=visual,
            frame_indices=tuple(int(p) for p in positions),
            selected_frames=tuple(int(s) for s in selected),
            seconds=MappingProxyType(seconds),
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
        return self._run(M.EMBED_TOKENS, M.R_INPUTS_EMBEDS, {M.R_INPUT_IDS: ids})  # (1, S, H)

    def prompt_ids(self, question: str) -> np.ndarray:
        """The question's prompt ids as the manifest describes the prompt (checks the question)."""
        return manifest_prompt_ids(self.tokenizer, self.prompt, question)

    def split_prompt(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(prefix, suffix): the prompt ids before and after the visual sentinels' run."""
        return split_visual(ids, int(self.prompt[M.PR_TOKEN_INDEX]))

    def token_limit(self, prompt_length: int, max_new_tokens: int) -> int:
        """How many tokens an answer may generate after ``prompt_length`` positions:
        ``max_new_tokens``, cut to fit the decoder's max_position_embeddings."""
        max_positions = self.decoder_cfg.get("max_position_embeddings")
        if not max_positions:
            return max_new_tokens
        if prompt_length >= max_positions:
            raise MvgptError(
                f"prompt too long: expected fewer than {max_positions} positions, got "
                f"{prompt_length}; fix: ask a shorter question"
            )
        return min(max_new_tokens, max_positions - prompt_length)

    def prefill_shared(self, encoding: Encoding, prefix_ids: np.ndarray, cache: KVCache) -> bool:
        """Fill an empty ``cache`` with [prompt prefix, visual]: from this pipeline's earlier
        prefill of ``encoding`` when it has one (True), else by running the decoder (False) and
        keeping a copy for the Encoding's later questions."""
        shared = self._shared.get(encoding)
        if shared is not None and np.array_equal(shared.ids, prefix_ids):
            cache.load(shared.keys, shared.values)
            return True
        embeds = np.concatenate([self._embed(prefix_ids), encoding.visual[None]], axis=1)
        self.decoder.prefill(embeds, cache)
        self._shared[encoding] = _SharedPrefill(np.array(prefix_ids), *cache.snapshot())
        return False

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
        ids = self.prompt_ids(question)  # checks the question before any heavy work
        gen = self.generation_config(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            repetition_penalty=repetition_penalty,
        )
        given = isinstance(video, Encoding)
        encoding = video if given else self.encode(video)
        seconds = {k: 0.0 if given else encoding.seconds.get(k, 0.0) for k in ENCODE_STAGES}
        prefix_ids, _ = self.split_prompt(ids)
        return self.generate(
            ids,
            gen,
            encoding,
            lambda cache: self.prefill_shared(encoding, prefix_ids, cache),
            start=start,
            seconds=seconds,
            on_text=on_text,
        )

    def generate(
        self,
        ids: np.ndarray,
        gen: GenerationConfig,
        encoding: Encoding,
        fill_prefix: Callable[[KVCache], bool],
        *,
        start: float,
        seconds: dict[str, float],
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """The language half of an answer to prompt ``ids`` about ``encoding``:
        ``fill_prefix(cache)`` puts [prompt prefix, visual] into the empty KV cache (True when it
        came from an earlier prefill), then the question's own tokens are prefilled and the
        decode loop runs. ``start``: perf_counter() when the question came (for ttft_s)."""
        seconds = dict(seconds)
        t0 = time.perf_counter()
        prefix_ids, suffix_ids = self.split_prompt(ids)
        prompt_length = len(prefix_ids) + self.num_visual_tokens + len(suffix_ids)
        limit = self.token_limit(prompt_length, gen.max_new_tokens)
        cache = self.decoder.new_cache(prompt_length + limit)
        reused = fill_prefix(cache)
        logits = self.decoder.prefill(self._embed(suffix_ids), cache)
        t1 = time.perf_counter()
        seconds["prefill"] = t1 - t0

        stream = TextStream(self.tokenizer, on_text) if on_text is not None else None
        decoded = decode_loop(
            logits,
            lambda token: self.decoder.run(self._embed([token]), cache),
            Sampler(gen),
            limit,
            stream.push if stream is not None else None,
        )
        if stream is not None:
            stream.finish()
        seconds["decode"] = time.perf_counter() - t1
        first = decoded.first_token_at
        return Answer(
            text=decode_answer(self.tokenizer, decoded.token_ids, self.prompt[M.PR_STOP]),
            token_ids=decoded.token_ids,
            frame_indices=encoding.frame_indices,
            selected_frames=encoding.selected_frames,
            seconds=MappingProxyType(seconds),
            ttft_s=(first if first is not None else time.perf_counter()) - start,
            decode_tokens_per_s=decoded.steps / decoded.step_seconds
            if decoded.steps and decoded.step_seconds > 0
            else None,
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
