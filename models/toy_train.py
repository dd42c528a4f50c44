"""Train the built-in toy model (issue 16) on generated videos, on CPU, from one seed.

    python -m mvgpt.models.toy_train --out OUT [--data DATA] [--train 2400] [--seed 0]

The training examples are made first (``toy_data.build_dataset``: each scene's 16 sampled frames
through the task's mp4 writer, OpenCV's decoder and the runtime's resizes) unless ``--data`` names
a folder made before. Then, in one process (``toy_model`` says what the tokens carry):

1. clip: the CLIP tower and the image projector learn each frame's summary token from pixels
   (mean squared error on its first ``SUMMARY`` channels), with two linear read-outs of every
   patch feature (not part of the model): which class covers the patch (cross-entropy; the dense
   signal that teaches the tower shapes) and where the patch is (``keep_position_loss``: without
   it the last features forget position and the tokens cannot say where anything is).
2. the trained tower encodes every training video as the runtime does: CLIP features of the 16
   frames, the frame scorer's choice of 8, the 16 image tokens.
3. mamba: VideoMamba and the video projector learn the two chunk tokens' summaries (the mean of
   the summaries of each chunk's 4 selected frames) from those 8 frames, with the same per-patch
   read-out on VideoMamba's features.
4. decoder: the Qwen2 decoder (and its embeddings) learns to answer every question of the
   training videos from the towers' real 18 visual tokens, in the runtime's ChatML prompt, with
   supervised layer-0 attention, read-outs of the motion and of which classes the video shows
   (``train_decoder``); each question is seen under one of the task's 16 symmetries
   (``--symmetries 1``, ``turn_tokens``: mirrored, transposed or played backwards, the motion
   answer turned alike), 16 times the videos the decoder learns from.

The result is written by ``toy_checkpoint.write_checkpoint`` in the official layout with the
toy tokenizer; ``--val N`` held-out videos are answered after each stage (the log says how well).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mvgpt.models import qwen2
from mvgpt.models import toy_data as td
from mvgpt.models import toy_tokenizer as tt
from mvgpt.models import toy_videos as tv
from mvgpt.models.chunked_scan import ChunkedSelectiveScan
from mvgpt.models.frame_scorer import frame_scores, select_frames
from mvgpt.models.mobile_videogpt import MobileVideoGPT
from mvgpt.models.toy_model import (
    AREA,
    CLASSES,
    SUMMARY,
    ToySize,
    patch_centres,
    patch_summary,
    summary,
    toy_config,
)
from mvgpt.runtime.preprocess import preprocess_clip, preprocess_video_mamba
from mvgpt.runtime.prompt import prompt_ids, split_visual

TYPES = ("colour", "shape", "motion", "count")
FRAMES = td.NUM_FRAMES  # image tokens, one per frame
EDGE_FRAMES = 4  # image tokens read as "where the objects were" and "where they are"
MOVE = 3.0  # scales the summaries' position change over the clip towards 1
PRESENT_LOW = 0.02  # presence targets 0.02 / 0.98: logits near -+3.9, not growing without end
KEEP_POSITION = 10.0  # weight of keep_position_loss
DIRECTION_WEIGHT = 1.0  # weight of the named object's direction read-out after decoder layer 1
DECODER_SEED = 1  # the decoder's torch stream is seeded seed + this (its init, then its stage)
TOWERS_SEED = 2  # and the towers' training's (their read-outs' init) seed + this


class Steps(argparse.Namespace):
    """The schedule (argparse fills it; these are the defaults)."""

    clip_steps = 5000  # 2500: held-out tokens' x/y 0.96 (motion probe 93%); 5000: 0.99 (97.7%)
    clip_batch = 32  # frames per step
    mamba_steps = 400
    mamba_batch = 3  # clips of 8 frames per step
    decoder_steps = 6000
    decoder_batch = 64  # questions per step
    lr = 2e-3
    decoder_lr = 3e-3
    motion_weight = 2.0  # how much likelier a motion question is to be drawn than another
    symmetries = 1  # 1: train on the videos' mirrored, transposed and reversed tokens too
    frame_layers = 1  # the decoder layers (from 0) whose frame_heads read the first/last frames
    word_heads = 2  # 2: layer-0 head 0 reads the question's colour word, head 1 its shape word
    early_pick = 0  # 1: also read the named object's move out after layer 0 (not only 1)
    presence_read = 1  # 1: also read out after layer 0 which classes the video shows (count)
    token_noise = 0.02  # std of fresh Gaussian noise added to the visual tokens at every step


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 5% (at most 100 steps), then cosine to zero."""
    warm = max(1, min(100, total // 20))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def new_model(vocab_size: int, seed: int, size: ToySize | None = None) -> MobileVideoGPT:
    """The toy-size reference model, freshly initialised from ``seed`` (GPT-style decoder)."""
    torch.manual_seed(seed)
    model = MobileVideoGPT(toy_config(vocab_size, size or ToySize()))  # the decoder made last
    with torch.random.fork_rng():  # its own stream: the towers' training is the same whatever
        torch.manual_seed(seed + DECODER_SEED)  # the decoder's size
        for module in model.decoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(model.decoder.embed_tokens.weight, std=0.02)
    return model


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, params) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def patch_loss(logits: torch.Tensor, cover: np.ndarray) -> torch.Tensor:
    """Soft cross-entropy of per-patch class logits (..., P, 13) against the cover shares,
    mostly-background patches weighted down."""
    shares = torch.from_numpy(np.asarray(cover, np.float32)).reshape(logits.shape)
    weight = torch.where(shares[..., 0] < 0.9, 1.0, 0.1)
    ce = -(shares * F.log_softmax(logits, -1)).sum(-1)
    return (ce * weight).sum() / weight.sum()


def summary_loss(tokens: torch.Tensor, target: np.ndarray) -> torch.Tensor:
    """Presence channels as logits (binary cross-entropy against 0/1, or the share of a chunk's
    frames, smoothed to 0.02..0.98 so that the logits stay within about +-4), the area and
    position channels by mean squared error."""
    target = torch.from_numpy(target)
    present = PRESENT_LOW + (1 - 2 * PRESENT_LOW) * target[:, :CLASSES]
    bce = F.binary_cross_entropy_with_logits(tokens[:, :CLASSES], present)
    return bce + F.mse_loss(tokens[:, CLASSES:], target[:, CLASSES:]) * 30.0


def keep_position_loss(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """A linear read-out of every patch feature (B, P, C) trained on the patch's own centre
    (x, y in -1..1): the tower keeps where each patch is, which the per-class position channels
    of the tokens are made from (without it the toy CLIP's last features lose it: patch x/y
    linear R^2 0.13/0.18 and token x/y channels uncorrelated with the truth)."""
    side = math.isqrt(features.shape[-2])
    xs, ys = patch_centres(side)
    target = torch.from_numpy(np.stack([xs.ravel(), ys.ravel()], -1))  # (P, 2)
    pred = head(features)
    return F.mse_loss(pred, target.expand_as(pred)) * KEEP_POSITION


def token_report(tokens: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """How well tokens (..., H) carry their ``summary`` target (..., SUMMARY): presence accuracy
    (logit > 0), and the Pearson correlation of the area, x and y channels over the classes
    present."""
    tokens = tokens.reshape(-1, tokens.shape[-1])[:, :SUMMARY]
    target = target.reshape(-1, SUMMARY)
    present = target[:, :CLASSES] > 0.5
    out = {"presence": float(((tokens[:, :CLASSES] > 0) == present).mean())}
    for k, name in enumerate(("area", "x", "y"), start=1):
        pred = tokens[:, k * CLASSES : (k + 1) * CLASSES][present]
        true = target[:, k * CLASSES : (k + 1) * CLASSES][present]
        out[name] = float(np.corrcoef(pred, true)[0, 1]) if len(true) > 2 else float("nan")
    return {k: round(v, 4) for k, v in out.items()}


def patch_position_loss(mlp_out: torch.Tensor, cover: np.ndarray) -> torch.Tensor:
    """The ETP MLP's per-patch outputs (B, P, H) against ``patch_summary`` (in cover units):
    where each class is, patch by patch, which the pooling turns into the token's channels."""
    pred = mlp_out[..., CLASSES:SUMMARY]
    target = torch.from_numpy(patch_summary(cover)).reshape(pred.shape)
    return F.mse_loss(pred / AREA, target / AREA) * 200.0


# ------------------------------------------------------------------------ stage 1: CLIP tower


def train_clip(model: MobileVideoGPT, data: td.Dataset, steps: Steps, rng, log) -> None:
    head = nn.Linear(model.cfg.clip.hidden_size, td.NUM_CLASSES)
    spot = nn.Linear(model.cfg.clip.hidden_size, 2)  # read-outs dropped after training
    params = [
        *model.clip.parameters(),
        *model.image_projector.parameters(),
        *head.parameters(),
        *spot.parameters(),
    ]
    opt = torch.optim.AdamW(params, lr=steps.lr, weight_decay=0.01)
    start = time.time()
    for step in range(steps.clip_steps):
        ex = np.sort(rng.choice(len(data), steps.clip_batch))
        fr = rng.choice(td.NUM_FRAMES, steps.clip_batch)
        pixels = np.stack([data.arrays["clip"][e, f] for e, f in zip(ex, fr, strict=True)])
        cover = np.stack([data.arrays["clip_cover"][e, f] for e, f in zip(ex, fr, strict=True)])
        features = model.clip(torch.from_numpy(preprocess_clip(pixels)))  # (B, 196, C)
        tokens = model.image_projector(features)[:, 0, :SUMMARY]  # (B, SUMMARY)
        token_loss = summary_loss(tokens, summary(cover))
        where = patch_position_loss(model.image_projector.mlp(features), cover)
        keep = keep_position_loss(spot, features)
        loss = token_loss + where + keep + patch_loss(head(features), cover)
        _step(opt, loss, lr_at(step, steps.clip_steps, steps.lr), params)
        if step % 200 == 0 or step == steps.clip_steps - 1:
            log(
                f"clip step {step}: loss {loss.item():.4f} (token {token_loss.item():.4f}, "
                f"patch positions {where.item():.4f}, kept positions {keep.item():.4f}), "
                f"{time.time() - start:.0f} s"
            )


@torch.no_grad()
def encode_clip(model: MobileVideoGPT, data: td.Dataset, log) -> tuple[np.ndarray, np.ndarray]:
    """Every video's 16 image tokens (N, 16, H) and the frame scorer's 8 frames (N, 8)."""
    sel = model.cfg.selection
    image, chosen = [], []
    start = time.time()
    for i in range(len(data)):
        features = model.clip(torch.from_numpy(preprocess_clip(np.asarray(data.arrays["clip"][i]))))
        chunks = features.reshape(sel.num_chunks, -1, features.shape[-1])
        picked = select_frames(
            frame_scores(chunks, sel.chunk_size), sel.num_select_k_frames_in_chunk
        )
        image.append(model.image_projector(features)[:, 0].numpy())
        chosen.append(picked.numpy())
    log(f"encoded {len(data)} videos with CLIP in {time.time() - start:.0f} s")
    return np.stack(image), np.stack(chosen)


# ------------------------------------------------------------------------ stage 3: VideoMamba


def chunk_summary(cover: np.ndarray, chunks: int = 2) -> np.ndarray:
    """(8, 7, 7, 13) cover of the selected frames -> (chunks, SUMMARY): each chunk's mean."""
    per_frame = summary(cover)  # (8, SUMMARY)
    return per_frame.reshape(chunks, -1, SUMMARY).mean(1)


def train_mamba(
    model: MobileVideoGPT, data: td.Dataset, chosen: np.ndarray, steps: Steps, rng, log
) -> None:
    scans = [block.mixer.scan for block in model.video_mamba.layers]
    for block in model.video_mamba.layers:  # the reference scan's math, fewer autograd steps
        block.mixer.scan = ChunkedSelectiveScan(delta_softplus=True)
    head = nn.Linear(model.cfg.video_mamba.embed_dim, td.NUM_CLASSES)
    spot = nn.Linear(model.cfg.video_mamba.embed_dim, 2)
    params = [
        *model.video_mamba.parameters(),
        *model.video_projector.parameters(),
        *head.parameters(),
        *spot.parameters(),
    ]
    opt = torch.optim.AdamW(params, lr=steps.lr, weight_decay=0.01)
    start = time.time()
    for step in range(steps.mamba_steps):
        pixels, targets, covers = [], [], []
        for e in rng.choice(len(data), steps.mamba_batch):
            idx = chosen[e]
            cover = np.asarray(data.arrays["mamba_cover"][e][idx])
            pixels.append(preprocess_video_mamba(np.asarray(data.arrays["mamba"][e][idx])))
            targets.append(chunk_summary(cover))
            covers.append(cover)
        x = torch.from_numpy(np.stack(pixels)).permute(0, 2, 1, 3, 4)  # (B, 3, 8, 224, 224)
        feats = model.video_mamba.features(x)  # (B*8, 49, C)
        tokens = torch.cat([model.video_projector(f)[:, 0] for f in feats.split(8)])
        token_loss = summary_loss(tokens[:, :SUMMARY], np.concatenate(targets))
        where = patch_position_loss(model.video_projector.mlp(feats), np.stack(covers))
        keep = keep_position_loss(spot, feats)
        loss = token_loss + where + keep + patch_loss(head(feats), np.stack(covers))
        _step(opt, loss, lr_at(step, steps.mamba_steps, steps.lr), params)
        if step % 100 == 0 or step == steps.mamba_steps - 1:
            log(
                f"mamba step {step}: loss {loss.item():.4f} (token {token_loss.item():.4f}), "
                f"{time.time() - start:.0f} s"
            )
    for block, scan in zip(model.video_mamba.layers, scans, strict=True):
        block.mixer.scan = scan


@torch.no_grad()
def encode_mamba(model: MobileVideoGPT, data: td.Dataset, chosen: np.ndarray, log) -> np.ndarray:
    """Every video's 2 video tokens (N, 2, H) from its 8 chosen frames."""
    scans = [block.mixer.scan for block in model.video_mamba.layers]
    for block in model.video_mamba.layers:
        block.mixer.scan = ChunkedSelectiveScan(delta_softplus=True)
    out = []
    start = time.time()
    for s in range(0, len(data), 8):
        rows = range(s, min(s + 8, len(data)))
        pixels = np.stack(
            [preprocess_video_mamba(np.asarray(data.arrays["mamba"][i][chosen[i]])) for i in rows]
        )
        feats = model.video_mamba.features(torch.from_numpy(pixels).permute(0, 2, 1, 3, 4))
        out.extend(model.video_projector(f)[:, 0].numpy() for f in feats.split(8))
    for block, scan in zip(model.video_mamba.layers, scans, strict=True):
        block.mixer.scan = scan
    log(f"encoded {len(data)} videos with VideoMamba in {time.time() - start:.0f} s")
    return np.stack(out)


# ----------------------------------------------------------- what the tokens say of the motion


def named_channels(visual: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per object of every video: the x, y, area and presence channels of its own class in the
    first and the last EDGE_FRAMES image tokens (their means), and its direction index: what
    the decoder's layer-0 heads 2 and 3 can read, with the class already picked."""
    rows, ways = [], []
    for v, per_class in enumerate(directions):
        for c in np.flatnonzero(per_class >= 0):
            k = c - 1  # classes in the tokens leave out the background
            picked = visual[v, :FRAMES][:, [2 * CLASSES + k, 3 * CLASSES + k, CLASSES + k, k]]
            ends = [picked[:EDGE_FRAMES].mean(0), picked[FRAMES - EDGE_FRAMES :].mean(0)]
            rows.append(np.concatenate(ends))
            ways.append(per_class[c])
    return np.asarray(rows, np.float32), np.asarray(ways, np.int64)


def motion_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 seed: int = 0, steps: int = 2000) -> dict[str, float]:  # fmt: skip
    """How well the image tokens say each object's direction when its class is given: a small
    MLP (not part of the model) trained on the training videos' ``named_channels`` and scored
    on the held-out ones. It bounds what the decoder's motion answers can reach through the
    first and last frames, apart from picking the named class (the decoder's own part)."""
    (x, y), (x_val, y_val) = (named_channels(*train), named_channels(*val))
    mean, std = x.mean(0), x.std(0) + 1e-6
    with torch.random.fork_rng():  # the training's own random state is left as it was
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
            nn.Linear(128, len(td.DIRECTIONS)),
        )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    inputs, targets = torch.from_numpy((x - mean) / std), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(inputs), targets).backward()
        opt.step()
    with torch.no_grad():
        right = net(torch.from_numpy((x_val - mean) / std)).argmax(-1).numpy() == y_val
        fit = (net(inputs).argmax(-1).numpy() == y).mean()
    return {"train": round(float(fit), 4), "held_out": round(float(right.mean()), 4)}


# --------------------------------------------------------------------------- stage 4: decoder


def asked_class(kind: str, question: str) -> int:
    """The class index (0..11, colour-major) a motion question names; -1 for other kinds."""
    if kind != "motion":
        return -1
    words = question.rstrip("?").split()
    colour = next(c for c in td.COLOURS if c in words)
    shape = next(h for h in td.SHAPES if h in words)
    return td.COLOURS.index(colour) * len(td.SHAPES) + td.SHAPES.index(shape)


class Questions:
    """Every (video, question) of a dataset as prompt pieces: the text ids before the visual
    tokens (the same for every question: the system prompt), and per question the ids after
    them (question, ChatML markers) followed by the answer's ids and <|im_end|>; for motion
    questions also followed by each other direction (the answer of a turned video)."""

    def __init__(self, data: td.Dataset, tokenizer, num_visual: int):
        end = tokenizer.token_to_id("<|im_end|>")
        ways = [[*tokenizer.encode(d, add_special_tokens=False).ids, end] for d in td.DIRECTIONS]
        rows, texts, answers = [], [], []
        self.before = None
        for v, asked in enumerate(data.questions):
            for q in asked:
                before, after = split_visual(prompt_ids(tokenizer, q.question, 16, 1))
                if self.before is None:
                    self.before = before
                assert np.array_equal(before, self.before)  # the system prompt only
                answer = [*tokenizer.encode(q.answer, add_special_tokens=False).ids, end]
                rows.append((v, after, answer, q.type))
                texts.append(q.question)
                answers.append(q.answer)
        length = max(len(after) + max(map(len, [answer, *ways])) for _, after, answer, _ in rows)
        # per row and direction: the row answered with that direction if it is a motion
        # question (what a turned or mirrored video's answer is), else the row as asked
        variants = len(td.DIRECTIONS)
        self.turned_ids = np.zeros((len(rows), variants, length), np.int64)  # right-padded
        self.turned_targets = np.full((len(rows), variants, length), -100, np.int64)
        self.turned_lengths = np.zeros((len(rows), variants), np.int64)
        for i, (_, after, answer, kind) in enumerate(rows):
            for d in range(variants):
                said = ways[d] if kind == "motion" else answer
                self.turned_ids[i, d, : len(after) + len(said)] = [*after, *said]
                # position len(after) - 1 (the last prompt token) predicts the answer's first id
                self.turned_targets[i, d, len(after) - 1 : len(after) - 1 + len(said)] = said
                self.turned_lengths[i, d] = len(after) + len(said)
        self.types = [r[3] for r in rows]
        self.direction = np.asarray(  # the motion answer's index in DIRECTIONS, -1 otherwise
            [
                td.DIRECTIONS.index(a) if t == "motion" else -1
                for a, t in zip(answers, self.types, strict=True)
            ]
        )
        own = np.maximum(self.direction, 0)  # other rows: every variant is the row as asked
        everyone = np.arange(len(rows))
        self.ids = self.turned_ids[everyone, own]  # each row as asked
        self.targets = self.turned_targets[everyone, own]
        self.lengths = self.turned_lengths[everyone, own]

        def pieces(words) -> list[int]:
            return [
                tokenizer.token_to_id(piece)
                for word in words
                for piece in tokenizer.encode(" " + word, add_special_tokens=False).tokens
            ]

        prompt = np.arange(length)[None] < np.asarray([len(r[1]) for r in rows])[:, None]
        self.colour_words = np.isin(self.ids, pieces(td.COLOURS)) & prompt  # the question's
        self.shape_words = np.isin(self.ids, pieces(td.SHAPES)) & prompt  # named colour, shape
        self.words = self.colour_words | self.shape_words
        self.prompt_lengths = np.asarray([len(r[1]) for r in rows], np.int64)  # ids after visual
        self.video = np.asarray([r[0] for r in rows], np.int64)
        # per video: which classes it shows (index 0 of directions is the background)
        self.shown = (np.asarray(data.directions)[:, 1:] >= 0).astype(np.float32)
        self.asked = np.asarray([asked_class(r[3], q) for r, q in zip(rows, texts, strict=True)])
        self.num_visual = num_visual

    def __len__(self) -> int:
        return len(self.types)

    def batch(
        self, decoder, visual: np.ndarray, items, turns: np.ndarray | None = None
    ) -> tuple[torch.Tensor, ...]:
        """inputs_embeds (B, S, H) (system prompt, visual tokens, question and answer, right-
        padded), next-token targets (B, S) (-100 except at the answer) and the attention mask.
        ``turns`` (B,) applies a ``symmetry`` to each row's visual tokens and motion answer."""
        items = np.asarray(items)
        tokens = visual[self.video[items]]
        ways = np.maximum(self.direction[items], 0)  # 0 (still) turns into itself
        if turns is not None:
            tokens = turn_tokens(tokens, turns)
            ways = turn_directions(ways, turns)
        lengths = self.turned_lengths[items, ways]
        width = int(lengths.max())
        ids = torch.from_numpy(self.turned_ids[items, ways, :width])
        count = len(items)
        before = decoder.embed(torch.from_numpy(self.before))[None].expand(count, -1, -1)
        embeds = torch.cat([before, torch.from_numpy(tokens), decoder.embed(ids)], dim=1)
        lead = len(self.before) + self.num_visual
        targets = torch.full((count, lead + width), -100, dtype=torch.int64)
        targets[:, lead:] = torch.from_numpy(self.turned_targets[items, ways, :width])
        mask = torch.ones(count, lead + width, dtype=torch.int64)
        mask[:, lead:] = torch.from_numpy(
            (np.arange(width)[None] < lengths[:, None]).astype(np.int64)
        )
        return embeds, targets, mask


# ------------------------------------------------------------- symmetries of the task's videos

SYMMETRIES = 16  # bits: 1 swap x and y, 2 mirror x, 4 mirror y, 8 play backwards
STEP = {"still": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _turn_xy(x: np.ndarray, y: np.ndarray, turns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y (B, ...) of a position change under each row's symmetry: swapped, then each
    negated when mirrored, both negated when played backwards."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    swap = (turns & 1).astype(bool).reshape(shape)
    x, y = np.where(swap, y, x), np.where(swap, x, y)
    flip_x = np.where(((turns >> 1) & 1) ^ ((turns >> 3) & 1), -1, 1).reshape(shape)
    flip_y = np.where(((turns >> 2) & 1) ^ ((turns >> 3) & 1), -1, 1).reshape(shape)
    return x * flip_x, y * flip_y


def turn_directions(ways: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """Direction indices (B,) of DIRECTIONS -> where each object goes in the turned video."""
    steps = np.asarray([STEP[d] for d in td.DIRECTIONS])[ways]  # (B, 2)
    x, y = _turn_xy(steps[:, 0], steps[:, 1], turns)
    lookup = {STEP[d]: k for k, d in enumerate(td.DIRECTIONS)}
    return np.asarray([lookup[(int(a), int(b))] for a, b in zip(x, y, strict=True)])


def turn_tokens(tokens: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """Visual tokens (B, 16 + 2, H) as the turned videos would give them: the area-weighted x and
    y channels swapped and negated like positions (x and y are centred on the frame, so a mirror
    negates them; presence and area stay), and backwards: the frames and the two chunks in
    reverse order, positions unchanged. Channels past ``SUMMARY`` are left as they are."""
    out = np.array(tokens, np.float32, copy=True)
    x, y = _turn_xy(  # a position, unlike a move, keeps its sign when played backwards
        out[..., 2 * CLASSES : 3 * CLASSES], out[..., 3 * CLASSES : 4 * CLASSES], turns & 7
    )
    out[..., 2 * CLASSES : 3 * CLASSES], out[..., 3 * CLASSES : 4 * CLASSES] = x, y
    back = ((turns >> 3) & 1).astype(bool)
    frames, chunks = out[back, :FRAMES], out[back, FRAMES:]
    out[back] = np.concatenate([frames[:, ::-1], chunks[:, ::-1]], axis=1)
    return out


def turn_moves(moved: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """``displacements`` rows (B, 2 * CLASSES) under each row's symmetry."""
    x, y = _turn_xy(moved[:, :CLASSES], moved[:, CLASSES:], turns)
    return np.concatenate([x, y], axis=1).astype(np.float32)


def attention_log_probs(decoder, hidden: torch.Tensor, head, layer: int = 0) -> torch.Tensor:
    """log attention probabilities (B, S, S) of ``head`` in decoder layer ``layer`` whose input
    is ``hidden`` (the embeddings for layer 0), computed as the decoder computes them (RoPE,
    GQA head sharing, causal mask); for a list of heads, (B, len(head), S, S) in one pass (the
    norm and the projections computed once)."""
    heads = [head] if isinstance(head, int) else list(head)
    block = decoder.layers[layer]
    attn = block.self_attn
    x = block.input_layernorm(hidden)
    batch, length, _ = x.shape
    hd = attn.head_dim
    group = attn.num_heads // attn.num_kv_heads
    q = attn.q_proj(x).view(batch, length, attn.num_heads, hd)[:, :, heads].transpose(1, 2)
    k = attn.k_proj(x).view(batch, length, attn.num_kv_heads, hd)
    k = k[:, :, [h // group for h in heads]].transpose(1, 2)
    positions = torch.arange(length)[None].expand(batch, -1)
    cos, sin = qwen2.rotary_cos_sin(positions, hd, decoder.cfg.rope_theta, x.dtype)
    q, k = qwen2.apply_rotary(q, cos, sin), qwen2.apply_rotary(k, cos, sin)
    scores = q @ k.transpose(-1, -2) * hd**-0.5  # (B, heads, S, S)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    log_probs = F.log_softmax(scores.masked_fill(~causal, float("-inf")), -1)
    return log_probs[:, 0] if isinstance(head, int) else log_probs


def frame_heads(num_heads: int) -> tuple[list[int], list[int]]:
    """The heads of a layer that read the first and the last frames: after the two question-word
    heads (0 and 1), the rest in two halves (4 heads: [2] and [3]; 8: [2, 3, 4] and [5, 6, 7])."""
    half = (num_heads - 2) // 2
    if half < 1:
        raise ValueError(f"the toy decoder needs at least 4 attention heads, got {num_heads}")
    return list(range(2, 2 + half)), list(range(2 + half, 2 + 2 * half))


def frames_read_loss(
    log_probs: torch.Tensor, questions, items, lead: int, frames: range
) -> torch.Tensor:
    """Teach a layer-0 head to let the last prompt position read the image tokens of
    ``frames`` (the first or the last few): minus the log of its attention mass on them.

    One head reads where the objects were at the start, another where they are at the end;
    the answer's loss then teaches the heads' values and the layers above to take the
    difference (the motion) of the object the question names."""
    ask = torch.from_numpy(questions.prompt_lengths[items]) - 1 + lead  # (B,)
    first = lead - questions.num_visual
    rows = log_probs[torch.arange(len(items)), ask, first + frames.start : first + frames.stop]
    return -torch.logsumexp(rows, -1).mean()


def question_word_loss(
    log_probs: torch.Tensor, questions, items, lead: int, words: np.ndarray | None = None
) -> torch.Tensor:
    """Teach a layer-0 head to let the last prompt position (the one that predicts the answer)
    read the question's colour and shape words (or the ``words`` mask given, (N, S) over the
    ids after the visual tokens): minus the log of the attention mass on them, over the
    questions that have one (not "How many")."""
    width = log_probs.shape[-1] - lead  # this batch's ids after the visual tokens
    words = questions.words if words is None else words
    words = torch.from_numpy(words[items, :width])  # (B, width)
    named = words.any(1)
    if not named.any():
        return log_probs.new_zeros(())
    ask = torch.from_numpy(questions.prompt_lengths[items]) - 1 + lead  # (B,)
    rows = log_probs[torch.arange(len(items)), ask, lead : lead + words.shape[1]]  # (B, width)
    mass = torch.logsumexp(rows.masked_fill(~words, float("-inf")), -1)
    return -mass[named].mean()


def decoder_logits(decoder, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(embeds.shape[1])[None].expand(embeds.shape[0], -1)
    logits, _ = decoder(embeds, mask, positions, decoder.empty_cache(embeds.shape[0]))
    return logits


@torch.no_grad()
def answer_accuracy(decoder, questions: Questions, visual: np.ndarray) -> dict[str, float]:
    """Share of questions whose every answer token (and <|im_end|>) is the argmax: exactly the
    questions greedy decoding answers right."""
    right = dict.fromkeys(TYPES, 0)
    total = dict.fromkeys(TYPES, 0)
    for s in range(0, len(questions), 256):
        items = range(s, min(s + 256, len(questions)))
        embeds, targets, mask = questions.batch(decoder, visual, items)
        ok = ((decoder_logits(decoder, embeds, mask).argmax(-1) == targets) | (targets < 0)).all(1)
        for i, good in zip(items, ok.tolist(), strict=True):
            kind = questions.types[i]
            total[kind] += 1
            right[kind] += int(good)
    acc = {k: round(right[k] / total[k], 4) for k in TYPES if total[k]}
    acc["all"] = round(sum(right.values()) / max(1, sum(total.values())), 4)
    return acc


def displacements(summaries: np.ndarray) -> np.ndarray:
    """(N, 16, SUMMARY) per-frame summaries -> (N, 2 * CLASSES): each class's area-weighted x and
    y in the last EDGE_FRAMES frames minus in the first ones (scaled by MOVE)."""
    xy = summaries[..., 2 * CLASSES : 4 * CLASSES]
    return MOVE * (xy[:, -EDGE_FRAMES:].mean(1) - xy[:, :EDGE_FRAMES].mean(1))


def train_decoder(
    model: MobileVideoGPT,
    questions: Questions,
    visual: np.ndarray,
    moved: np.ndarray,
    steps: Steps,
    rng,
    log,
    val: tuple[Questions, np.ndarray] | None = None,
) -> None:
    """The answers' cross-entropy, plus three losses that say where layer 0's heads look from
    the position that predicts the answer: head 1 (or heads 0 and 1) at the question's colour and
    shape words (``question_word_loss``), the ``frame_heads`` at the first ``EDGE_FRAMES`` image
    tokens and at the last ones (``frames_read_loss``; heads 2 and 3 of four, 2-4 and 5-7 of
    eight); and linear read-outs (dropped after training) from that position:
    every class's displacement after layer 0, and for motion questions the named object's
    displacement and its direction (cross-entropy over DIRECTIONS) after layer 1. The direction
    read-out took motion on ideal tokens from 0.65 to 0.81 in 3000 steps. With
    ``steps.symmetries`` every drawn question comes with one of the ``SYMMETRIES`` (its tokens,
    answer and read-out targets turned alike); ``steps.frame_layers`` 2 also has layer 1's frame
    heads read the first and last frames. ``steps.word_heads`` 2 splits the question-word read:
    head 0 the colour word, head 1 the shape word (with one head for both, head 1 settled on the
    shape word, nothing read the colour, and motion confused objects of the same shape: 214 of
    279 confusions); ``steps.early_pick`` 1 reads the named object's move out after layer 0 too;
    ``steps.presence_read`` 1 reads out after layer 0 which classes the video shows (count
    questions answered "three" for two clean objects: 7 of 15 count errors, before it)."""
    decoder = model.decoder
    probe = nn.Linear(decoder.cfg.hidden_size, moved.shape[-1])  # read-outs dropped after
    asked_probe = nn.Linear(decoder.cfg.hidden_size, 2)  # training
    direction_probe = nn.Linear(decoder.cfg.hidden_size, len(td.DIRECTIONS))
    # made only when asked: torch's random stream stays the recipe's without
    early_probe = nn.Linear(decoder.cfg.hidden_size, 2) if steps.early_pick else None
    shown_probe = nn.Linear(decoder.cfg.hidden_size, CLASSES) if steps.presence_read else None
    params = [
        *decoder.parameters(),
        *probe.parameters(),
        *asked_probe.parameters(),
        *direction_probe.parameters(),
        *(early_probe.parameters() if early_probe is not None else ()),
        *(shown_probe.parameters() if shown_probe is not None else ()),
    ]
    opt = torch.optim.AdamW(params, lr=steps.decoder_lr, weight_decay=0.01)
    lead = len(questions.before) + questions.num_visual  # the first id after the visual tokens
    early, late = range(EDGE_FRAMES), range(FRAMES - EDGE_FRAMES, FRAMES)
    word_reads = (  # (layer-0 head, the question words it reads); None: colour and shape
        ((0, questions.colour_words), (1, questions.shape_words))
        if steps.word_heads == 2
        else ((1, None),)  # one head for both may settle on one (motion then confuses objects)
    )
    firsts, lasts = frame_heads(decoder.cfg.num_attention_heads)
    supervised = [  # per layer: the heads whose attention a loss reads (words in layer 0 only)
        ([h for h, _ in word_reads] if layer == 0 else []) + (firsts + lasts)
        for layer in range(steps.frame_layers)  # at least 1: main checks
    ]
    layer0: list[torch.Tensor] = []
    layer1: list[torch.Tensor] = []
    hooks = [
        decoder.layers[0].register_forward_hook(lambda _m, _i, out: layer0.append(out[0])),
        decoder.layers[1].register_forward_hook(lambda _m, _i, out: layer1.append(out[0])),
    ]
    start = time.time()
    draw = np.where(np.asarray(questions.types) == "motion", steps.motion_weight, 1.0)
    draw /= draw.sum()
    for step in range(steps.decoder_steps):
        items = rng.choice(len(questions), steps.decoder_batch, p=draw)
        turns = (  # the draw only when asked: the rng stream stays the recipe's without
            rng.integers(0, SYMMETRIES, len(items)) if steps.symmetries else np.zeros_like(items)
        )
        embeds, targets, mask = questions.batch(decoder, visual, items, turns)
        seen_moves = turn_moves(moved[questions.video[items]], turns)
        if steps.token_noise:  # the towers' tokens of a video differ a little every time
            first = len(questions.before)
            seen = embeds[:, first : first + questions.num_visual]
            seen.add_(torch.randn(seen.shape) * steps.token_noise)
        layer0.clear()
        layer1.clear()
        logits = decoder_logits(decoder, embeds, mask)
        ask = torch.from_numpy(questions.prompt_lengths[items]) - 1 + lead
        after0 = layer0[0][torch.arange(len(items)), ask]  # (B, H) after layer 0
        move = F.mse_loss(probe(after0), torch.from_numpy(seen_moves))
        if shown_probe is not None:  # every class's presence in the video (a count's terms)
            truth = torch.from_numpy(questions.shown[questions.video[items]])
            move = move + F.binary_cross_entropy_with_logits(shown_probe(after0), truth)
        # after layer 1, the named object's own move (motion questions): x and y
        which = questions.asked[items]
        motion = torch.from_numpy(which >= 0)
        if motion.any():
            rows = seen_moves[which >= 0]  # (M, 2 * CLASSES)
            picked = which[which >= 0]
            own = np.stack(
                [
                    rows[np.arange(len(picked)), picked],
                    rows[np.arange(len(picked)), CLASSES + picked],
                ],
                1,
            )
            after1 = layer1[0][torch.arange(len(items)), ask][motion]
            move = move + F.mse_loss(asked_probe(after1), torch.from_numpy(own))
            if early_probe is not None:  # layer 0's MLP picks the named class's move
                guess = early_probe(after0[motion])
                move = move + F.mse_loss(guess, torch.from_numpy(own))
            way = turn_directions(questions.direction[items][which >= 0], turns[which >= 0])
            way = torch.from_numpy(way)
            move = move + DIRECTION_WEIGHT * F.cross_entropy(direction_probe(after1), way)
        answer_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        read, then, now = 0.0, 0.0, 0.0
        for layer, heads in enumerate(supervised):  # the frame heads of layers 0, 1, ...
            hidden = embeds if layer == 0 else (layer0, layer1)[layer - 1][0]
            log_probs = attention_log_probs(decoder, hidden, heads, layer)
            words = len(heads) - len(firsts) - len(lasts)  # layer 0: the word heads first
            for i, (_, w) in enumerate(word_reads[:words]):
                read = read + question_word_loss(log_probs[:, i], questions, items, lead, w)
            for i in range(len(firsts)):
                at = words + i
                then = then + frames_read_loss(log_probs[:, at], questions, items, lead, early)
                at = words + len(firsts) + i
                now = now + frames_read_loss(log_probs[:, at], questions, items, lead, late)
        loss = answer_loss + read + then + now + move
        _step(opt, loss, lr_at(step, steps.decoder_steps, steps.decoder_lr), params)
        if step % 500 == 499 or step == 0 or step == steps.decoder_steps - 1:
            msg = (
                f"decoder step {step}: answer loss {answer_loss.item():.4f}, question words "
                f"{read.item():.4f}, first frames {then.item():.4f}, last frames "
                f"{now.item():.4f}, moved {move.item():.4f}, {time.time() - start:.0f} s"
            )
            if val is not None and (step % 1000 == 999 or step == steps.decoder_steps - 1):
                msg += f", held-out {json.dumps(answer_accuracy(decoder, *val))}"
            log(msg)
    for hook in hooks:
        hook.remove()


# ------------------------------------------------------------------------------------- main


def make_data(folder: Path, train: int, val: int, log) -> tuple[td.Dataset, td.Dataset]:
    """The datasets in FOLDER/train and FOLDER/val, made unless they are already there."""
    sets = []
    for name, split, count in (("train", "train", train), ("val", "heldout", val)):
        path = folder / name
        if not (path / "meta.npz").is_file():
            start = time.time()
            td.build_dataset(tv.split_seeds(split, count), path)
            log(f"made {count} {split} scenes in {path} in {time.time() - start:.0f} s")
        data = td.Dataset(path)
        if len(data) != count:
            raise SystemExit(
                f"toy_train: expected {count} scenes in {path}, got {len(data)}; fix: remove "
                "the folder or pass the count it was made with"
            )
        sets.append(data)
    return sets[0], sets[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the log and the checkpoint")
    parser.add_argument("--data", help="folder for the datasets (default OUT/data)")
    parser.add_argument("--train", type=int, default=2400, help="training scenes")
    parser.add_argument("--val", type=int, default=200, help="held-out scenes to report on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--resume", action="store_true", help="reuse OUT/towers.pt: train the decoder only"
    )
    tunable = {"clip_steps": int, "mamba_steps": int, "decoder_steps": int,
               "motion_weight": float, "token_noise": float, "symmetries": int,
               "frame_layers": int, "word_heads": int, "early_pick": int,
               "presence_read": int}  # fmt: skip
    sizes = {"heads": "num_attention_heads", "kv_heads": "num_key_value_heads"}  # ToySize's
    for name in sizes:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    for name, kind in tunable.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, dest=name)
    args = parser.parse_args(argv)
    if args.frame_layers is not None and args.frame_layers < 1:
        parser.error("--frame-layers must be at least 1")
    given = {f: getattr(args, a) for a, f in sizes.items() if getattr(args, a) is not None}
    size = ToySize(**given)
    heads, kv = size.num_attention_heads, size.num_key_value_heads
    if kv < 1 or heads < 4 or heads % kv or size.hidden_size % heads:
        parser.error(f"--heads {heads} --kv-heads {kv}: the decoder needs at least 4 heads, a "
                     f"multiple of the kv heads, dividing hidden {size.hidden_size}")  # fmt: skip
    steps = Steps()
    for name in tunable:
        if getattr(args, name) is not None:
            setattr(steps, name, getattr(args, name))
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    begin = time.time()
    with open(out / "train.log", "a") as logfile:

        def log(msg: str) -> None:
            line = f"[{time.time() - begin:6.0f} s] {msg}"
            print(line, flush=True)
            logfile.write(line + "\n")
            logfile.flush()

        log(f"toy_train {json.dumps(vars(args))}")
        data, val = make_data(
            Path(args.data) if args.data else out / "data", args.train, args.val, log
        )
        tokenizer = tt.build_tokenizer()
        model = new_model(tokenizer.get_vocab_size(), args.seed, size)
        rng = np.random.default_rng(args.seed + 1)

        towers = out / "towers.pt"  # the trained towers and their encodings, for --resume
        if args.resume and towers.is_file():
            saved = torch.load(towers)
            model.load_state_dict(saved["state"], strict=False)
            visual, val_visual = saved["visual"].numpy(), saved["val_visual"].numpy()
            rng.bit_generator.state = saved["rng"]
            log(f"resumed the trained towers and their encodings from {towers}")
        else:
            torch.manual_seed(args.seed + TOWERS_SEED)  # the same whatever the decoder's size
            train_clip(model, data, steps, rng, log)
            image, chosen = encode_clip(model, data, log)
            val_image, val_chosen = encode_clip(model, val, log)
            truth = summary(np.asarray(val.arrays["clip_cover"]))
            log(f"held-out image tokens: {json.dumps(token_report(val_image, truth))}")
            train_mamba(model, data, chosen, steps, rng, log)
            video = encode_mamba(model, data, chosen, log)
            val_video = encode_mamba(model, val, val_chosen, log)
            truth = np.stack(
                [
                    chunk_summary(np.asarray(val.arrays["mamba_cover"][i][val_chosen[i]]))
                    for i in range(len(val))
                ]
            )
            log(f"held-out video tokens: {json.dumps(token_report(val_video, truth))}")
            visual = np.concatenate([image, video], axis=1)  # (N, 18, H), the runtime's order
            val_visual = np.concatenate([val_image, val_video], axis=1)
            probe = motion_probe((visual, data.directions), (val_visual, val.directions))
            log(f"motion from the named class's first/last image tokens: {json.dumps(probe)}")
            state = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder.")}
            torch.save(
                {
                    "state": state,
                    "visual": torch.from_numpy(visual),
                    "val_visual": torch.from_numpy(val_visual),
                    "rng": rng.bit_generator.state,
                },
                towers,
            )
        num_visual = model.cfg.num_visual_tokens
        questions = Questions(data, tokenizer, num_visual)
        val_questions = Questions(val, tokenizer, num_visual)
        moved = displacements(np.stack([summary(c) for c in data.arrays["clip_cover"]]))
        torch.manual_seed(args.seed + DECODER_SEED)  # the probes' init: --resume is the same run
        train_decoder(model, questions, visual, moved, steps, rng, log, (val_questions, val_visual))
        result = answer_accuracy(model.decoder, val_questions, val_visual)
        log(f"held-out answers (teacher-forced greedy): {json.dumps(result)}")

        from mvgpt.models import toy_checkpoint

        about = {
            "trained_by": "mvgpt.models.toy_train",
            "seed": args.seed,
            "train_scenes": len(data),
            "steps": {k: getattr(steps, k) for k in tunable},
            "minutes": round((time.time() - begin) / 60, 1),
            "val_accuracy": result,
        }
        model.eval()
        toy_checkpoint.write_checkpoint(model, tokenizer, out, about)
        log(f"checkpoint written to {out / 'checkpoint'} and {out / 'clip'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
