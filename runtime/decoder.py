"""The decoder run the runtime's way: its KV cache, its runs (prefill chunks and decode steps),
and the decode loop that chooses the answer's tokens.

The KV cache has a fixed capacity and is allocated once per answer: one buffer per layer for keys
and one for values. Every decoder run binds each buffer (IOBinding) as both its past input and
its present output; the decoder's GroupQueryAttention sees the same memory and writes the new
positions in place, so no token allocates or copies the cache (manifest: decoder.kv_cache).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from . import manifest as M
from .errors import MvgptError
from .package import StageIO
from .sampling import Sampler

PREFILL_CHUNK = 256  # positions per prefill run: bounds the attention scores' memory


class KVCache:
    """Fixed-capacity key/value cache of every decoder layer (see the module docstring): positions
    ``[0, length)`` of each (1, kv_heads, capacity, head_dim) buffer are in use.

    ``device`` None: numpy buffers in host memory, wrapped without a copy. A device name
    (``"cuda"``, the CUDA execution provider's device; ``"cpu"`` takes the same path): onnxruntime
    allocates the buffers there and every run binds them in place, so no token moves the cache
    between host and device; only ``snapshot`` and ``load`` (a kept prefix) copy it."""

    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: str = "float32",
        device: str | None = None,
    ) -> None:
        self.capacity = capacity
        self._dtype = np.dtype(dtype)
        self._shape = (1, kv_heads, capacity, head_dim)
        self._buffers = None
        if device is None:
            self._buffers = np.zeros((num_layers, 2, *self._shape), self._dtype)
            # per layer, the keys' and the values' OrtValue; they wrap the numpy memory, so
            # binding them never copies
            self.ort_values = [
                [ort.OrtValue.ortvalue_from_numpy(self._buffers[layer, kind]) for kind in (0, 1)]
                for layer in range(num_layers)
            ]
        else:
            self.ort_values = [
                [self._device_zeros(device) for _ in (0, 1)] for _ in range(num_layers)
            ]
        self.length = 0

    def _device_zeros(self, device: str) -> ort.OrtValue:
        """A buffer of onnxruntime's on ``device``, zeroed as the host buffers are (onnxruntime
        leaves it uninitialised)."""
        value = ort.OrtValue.ortvalue_from_shape_and_type(self._shape, self._dtype, device, 0)
        value.update_inplace(np.zeros(self._shape, self._dtype))
        return value

    def in_use(self, layer: int, kind: int) -> np.ndarray:
        """The positions in use of one buffer: a view (host cache) or a copy (device cache)."""
        if self._buffers is not None:
            return self._buffers[layer, kind, :, :, : self.length]
        return self.ort_values[layer][kind].numpy()[:, :, : self.length]

    def snapshot(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Copies of the keys and of the values in use, per layer."""
        layers = range(len(self.ort_values))
        keys, values = (tuple(self.in_use(i, kind).copy() for i in layers) for kind in (0, 1))
        return keys, values

    def load(self, keys: tuple[np.ndarray, ...], values: tuple[np.ndarray, ...]) -> None:
        """Start over from a ``snapshot``."""
        self.length = keys[0].shape[2]
        for i, pair in enumerate(zip(keys, values, strict=True)):
            for kind, saved in enumerate(pair):
                if self._buffers is not None:
                    self.in_use(i, kind)[...] = saved
                else:  # one host-to-device copy of the whole buffer
                    full = np.zeros(self._shape, self._dtype)
                    full[:, :, : self.length] = saved
                    self.ort_values[i][kind].update_inplace(full)


class Decoder:
    """The decoder session run the runtime's way: each call binds the KV cache's buffers as past
    and present (written in place) and gets the last position's logits only."""

    def __init__(
        self,
        session: ort.InferenceSession,
        decoder_cfg: dict,
        io: StageIO,
        cache_device: str | None = None,
    ) -> None:
        """``io``: the decoder's tensors by role (package.stage_io); ``cache_device``: where the
        KV cache lives (KVCache: None = host memory)."""
        self.session = session
        self.cache_device = cache_device
        self.layers = int(decoder_cfg["num_hidden_layers"])
        self.kv_heads = int(decoder_cfg["num_key_value_heads"])
        self.head_dim = int(decoder_cfg["head_dim"])
        self._io = io
        # per layer, (past, present) names of the keys, then of the values
        self._names = [((pk, nk), (pv, nv)) for pk, pv, nk, nv in io.cache]
        self._logits = np.empty((1, 1, int(decoder_cfg["vocab_size"])), np.float32)
        self._logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits)
        self._keep_last = np.array(1, np.int64)

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(
            self.layers,
            self.kv_heads,
            self.head_dim,
            capacity,
            self._io.cache_dtype,
            self.cache_device,
        )

    def run(self, embeds: np.ndarray, cache: KVCache) -> np.ndarray:
        """One decoder run over (1, S, H) embeds after the cached positions (a decode step, or a
        prefill chunk); returns the last position's (V,) logits (a view, overwritten by the next
        call)."""
        length = embeds.shape[1]
        total = cache.length + length
        if total > cache.capacity:
            raise MvgptError(
                f"KV cache: expected at most {cache.capacity} positions, got {total}; fix: "
                "lower max_new_tokens"
            )
        binding = self.session.io_binding()
        ins = self._io.inputs
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        binding.bind_cpu_input(ins[M.R_INPUTS_EMBEDS], embeds)
        binding.bind_cpu_input(ins[M.R_ATTENTION_MASK], np.ones((1, total), np.int64))
        binding.bind_cpu_input(ins[M.R_NUM_LOGITS_TO_KEEP], self._keep_last)
        for layer, names in enumerate(self._names):
            for kind, (past, present) in enumerate(names):
                value = cache.ort_values[layer][kind]
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
        binding.bind_ortvalue_output(self._io.outputs[M.R_LOGITS], self._logits_value)
        self.session.run_with_iobinding(binding)
        cache.length = total
        return self._logits[0, -1]

    def prefill(self, embeds: np.ndarray, cache: KVCache, chunk: int = PREFILL_CHUNK) -> np.ndarray:
        """``run`` over (1, S, H) in runs of ``chunk`` positions."""
        logits = None
        for start in range(0, embeds.shape[1], chunk):
            logits = self.run(embeds[:, start : start + chunk], cache)
        return logits


@dataclass(frozen=True)
class Decoded:
    """What ``decode_loop`` chose and how long its decoder steps took."""

    token_ids: tuple[int, ...]
    first_token_at: float | None  # time.perf_counter() when the first token was chosen
    steps: int  # decoder runs after the prefill
    step_seconds: float


def decode_loop(
    logits: np.ndarray,
    step: Callable[[int], np.ndarray],
    sampler: Sampler,
    limit: int,
    on_token: Callable[[int], None] | None = None,
) -> Decoded:
    """Up to ``limit`` tokens: each chosen by ``sampler`` from the latest logits (the prefill's
    first), then ``step(token)`` gives the next logits (not after the last token); an eos token
    ends the answer and is not kept. ``on_token`` hears each token as it is chosen."""
    generated: list[int] = []
    first_token_at = None
    steps, step_seconds = 0, 0.0
    while len(generated) < limit:
        token = sampler.next_token(logits, generated)
        if sampler.is_eos(token):
            break
        generated.append(token)
        if first_token_at is None:
            first_token_at = time.perf_counter()
        if on_token is not None:
            on_token(token)
        if len(generated) == limit:
            break
        t_step = time.perf_counter()
        logits = step(token)
        steps, step_seconds = steps + 1, step_seconds + time.perf_counter() - t_step
    return Decoded(tuple(generated), first_token_at, steps, step_seconds)
