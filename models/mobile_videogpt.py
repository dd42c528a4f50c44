"""The whole Mobile-VideoGPT reference: 16 frames + question -> answer tokens.

Data flow (facts file section 1): CLIP layer -2 patch features of all 16 frames -> parameter-free
frame scorer picks 4 of each chunk of 8 (time order kept) -> VideoMamba-M on those 8 frames ->
image projector (16 x 144 tokens) and video projector (2 x 49 tokens) -> the 2402 visual
embeddings replace the run of <image> sentinels in the ChatML prompt -> Qwen2 decoder with a KV
cache, greedy by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from mvgpt.models.checkpoint import Checkpoint
from mvgpt.models.clip import ClipVisionTower
from mvgpt.models.config import MobileVideoGPTConfig
from mvgpt.models.frame_scorer import FrameScorer, select_frames
from mvgpt.models.projector import ImageProjector, VideoProjector, adaptive_pool_matrix
from mvgpt.models.qwen2 import Qwen2Decoder
from mvgpt.models.videomamba import VideoMamba
from mvgpt.runtime.errors import CheckpointError
from mvgpt.runtime.prompt import IMAGE_TOKEN_INDEX
from mvgpt.runtime.sampling import GenerationConfig, Sampler


class MobileVideoGPT(nn.Module):
    """All trained parts of the model, in data-flow order."""

    def __init__(self, cfg: MobileVideoGPTConfig):
        super().__init__()
        self.cfg = cfg
        proj = cfg.projector
        self.clip = ClipVisionTower(cfg.clip)
        self.frame_scorer = FrameScorer(cfg.selection.chunk_size)
        self.video_mamba = VideoMamba(cfg.video_mamba)
        self.image_projector = ImageProjector(proj.image_in, proj.hidden_size, grid=proj.image_grid)
        self.video_projector = VideoProjector(
            proj.video_in,
            proj.hidden_size,
            num_chunks=cfg.selection.num_chunks,
            grid=proj.video_grid,
        )
        self.decoder = Qwen2Decoder(cfg.qwen)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> MobileVideoGPT:
        """Build the model and load every part strictly (all keys, right shapes).

        The modules are made on the meta device and take the checkpoint's tensors as their
        weights (``assign``): the model costs no memory beyond the loaded checkpoint (a 1.5B
        model is ~6.5 GB in fp32, and building it first and copying into it would need twice
        that)."""
        with torch.device("meta"):
            model = cls(ckpt.config)
        parts = (
            (model.clip, ckpt.clip),
            (model.video_mamba, ckpt.video_mamba),
            (model.image_projector, ckpt.image_projector),
            (model.video_projector, ckpt.video_projector),
            (model.decoder, ckpt.qwen),
        )
        for module, state in parts:
            module.load_state_dict(state, strict=True, assign=True)
        for projector in (model.image_projector, model.video_projector):
            projector.pool = adaptive_pool_matrix(projector.input_grid, projector.grid)
        tensors = (*model.named_parameters(), *model.named_buffers())
        left = [name for name, t in tensors if t.is_meta]
        if left:
            raise CheckpointError(
                f"{ckpt.checkpoint_dir}: expected every weight of the model to be loaded, got "
                f"{len(left)} without values ({left[:3]}); fix: check models/weights.py"
            )
        return model.eval()

    @torch.no_grad()
    def encode_video(
        self, clip_pixels: torch.Tensor, mamba_pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(F,3,224,224) twice, preprocessed per stream -> (visual (2402, H), selected (8,))."""
        sel = self.cfg.selection
        features = self.clip(clip_pixels.float())  # (F, 196, 768)
        num_frames, num_patches, dim = features.shape
        chunks = features.reshape(sel.num_chunks, sel.chunk_size * num_patches, dim)
        scores = self.frame_scorer(chunks)  # (chunks, chunk_size)
        selected = select_frames(scores, sel.num_select_k_frames_in_chunk)  # (8,) time order
        clip8 = mamba_pixels.float()[selected]  # (8, 3, 224, 224)
        video = self.video_mamba.features(clip8.permute(1, 0, 2, 3).unsqueeze(0))  # (8, 196, 576)
        dtype = next(self.image_projector.parameters()).dtype
        image_tokens = self.image_projector(features.to(dtype))  # (16, 144, H)
        video_tokens = self.video_projector(video.to(dtype))  # (2, 49, H)
        hidden = image_tokens.shape[-1]
        visual = torch.cat([image_tokens.reshape(-1, hidden), video_tokens.reshape(-1, hidden)])
        return visual, selected

    @torch.no_grad()
    def prompt_embeds(self, input_ids: np.ndarray, visual: torch.Tensor) -> torch.Tensor:
        """Prompt ids with one contiguous run of -200 sentinels -> (1, S, H) inputs_embeds."""
        device = self.decoder.embed_tokens.weight.device
        ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64), device=device)
        where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten()
        start, end = int(where[0]), int(where[-1]) + 1
        embed = self.decoder.embed
        dtype = self.decoder.embed_tokens.weight.dtype
        parts = [embed(ids[None, :start])[0], visual.to(dtype), embed(ids[None, end:])[0]]
        return torch.cat(parts).unsqueeze(0)

    @torch.no_grad()
    def stream(
        self,
        inputs_embeds: torch.Tensor,
        gen: GenerationConfig,
        on_token: Callable[[int], None] | None = None,
    ) -> Iterator[int]:
        """Prefill, then decode one token at a time with the KV cache, stopping on an eos id."""
        sampler = Sampler(gen)
        length, device = inputs_embeds.shape[1], inputs_embeds.device
        mask = torch.ones(1, length, dtype=torch.int64, device=device)
        positions = torch.arange(length, device=device).unsqueeze(0)
        past = self.decoder.empty_cache(1, inputs_embeds.dtype)
        logits, past = self.decoder(inputs_embeds, mask, positions, past)
        generated: list[int] = []
        while len(generated) < gen.max_new_tokens:
            token = sampler.next_token(logits[0, -1].float().cpu().numpy(), generated)
            if token in gen.eos_token_ids:
                break
            generated.append(token)
            yield token
            step = torch.tensor([[token]], device=device)
            mask = torch.ones(1, length + len(generated), dtype=torch.int64, device=device)
            positions = torch.tensor([[length + len(generated) - 1]], device=device)
            logits, past = self.decoder(self.decoder.embed(step), mask, positions, past)

    def generate(self, inputs_embeds: torch.Tensor, gen: GenerationConfig) -> list[int]:
        return list(self.stream(inputs_embeds, gen))
