"""The PyTorch reference runner: video file + question -> answer, fp32 or bf16.

It is the baseline every benchmark compares against and the oracle of the end-to-end parity
tests. Video decoding, preprocessing and prompt building are the runtime's numpy code (they are
not model math); everything after the pixels is the PyTorch reference model.

    python -m mvgpt.models.reference_runner --checkpoint DIR --clip DIR VIDEO QUESTION [--dtype]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from mvgpt.models.checkpoint import load_checkpoint
from mvgpt.models.mobile_videogpt import MobileVideoGPT
from mvgpt.runtime.errors import MvgptError
from mvgpt.runtime.preprocess import preprocess_clip, preprocess_video_mamba
from mvgpt.runtime.prompt import decode_answer, prompt_ids
from mvgpt.runtime.sampling import GenerationConfig
from mvgpt.runtime.video import read_frames

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ReferenceResult:
    answer: str
    token_ids: list[int]
    frame_indices: list[int]
    selected_frames: list[int]
    seconds: dict[str, float] = field(default_factory=dict)


class ReferenceRunner:
    """Holds the loaded reference model; answers questions about videos."""

    def __init__(
        self, checkpoint: str | Path, clip: str | Path, dtype: str = "fp32", device: str = "cpu"
    ):
        ckpt = load_checkpoint(checkpoint, clip)
        self.config = ckpt.config
        self.generation_config = ckpt.generation_config
        self.tokenizer = Tokenizer.from_file(str(Path(checkpoint) / "tokenizer.json"))
        self.model = MobileVideoGPT.from_checkpoint(ckpt)
        if dtype != "fp32":  # CLIP and VideoMamba stay fp32, as in the official code
            for part in (
                self.model.decoder,
                self.model.image_projector,
                self.model.video_projector,
            ):
                part.to(DTYPES[dtype])
        self.model.to(device)
        self.dtype, self.device = dtype, torch.device(device)

    def _sync(self) -> None:
        """Wait for the device's queued work, so that a timing covers it (CUDA runs async)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def answer(
        self, video: str | Path, question: str, max_new_tokens: int = 64, **overrides
    ) -> ReferenceResult:
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        ids = prompt_ids(self.tokenizer, question)  # validates the question first
        frames, positions = read_frames(video, self.config.selection.num_frames)
        clip_pixels = torch.from_numpy(
            preprocess_clip(frames, center_crop=self.config.clip.center_crop)
        ).to(self.device)
        mamba_pixels = torch.from_numpy(preprocess_video_mamba(frames)).to(self.device)
        seconds["decode_video"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        visual, selected = self.model.encode_video(clip_pixels, mamba_pixels)
        embeds = self.model.prompt_embeds(ids, visual)
        self._sync()
        seconds["encode"] = time.perf_counter() - t0
        gen = GenerationConfig.official(
            self.generation_config, max_new_tokens=max_new_tokens, **overrides
        )
        t0 = time.perf_counter()
        tokens: list[int] = []
        for token in self.model.stream(embeds, gen):
            if not tokens:
                seconds["ttft_after_encode"] = time.perf_counter() - t0
            tokens.append(token)
        seconds["generate"] = time.perf_counter() - t0
        return ReferenceResult(
            answer=decode_answer(self.tokenizer, tokens),
            token_ids=tokens,
            frame_indices=[int(p) for p in positions],
            selected_frames=[int(s) for s in selected],
            seconds=seconds,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PyTorch reference: video + question -> answer")
    parser.add_argument("video")
    parser.add_argument("question")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        runner = ReferenceRunner(args.checkpoint, args.clip, args.dtype)
        result = runner.answer(args.video, args.question, args.max_new_tokens)
    except MvgptError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    sys.stdout.write(json.dumps(result.__dict__) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
