"""One-token decoding steps with static shapes, replayed as CUDA graphs on a GPU.

Batch-1 decoding of a small model is bound by kernel launches, not arithmetic: each token runs
about twenty small kernels per layer, and on a GPU launching each from Python costs more than
running it. A CUDA graph records the kernels of one step once and replays them with a single
launch. A graph fixes every tensor's address and shape, so this step differs from
``Retro.step`` with an int position (which it must equal; a test compares them) in four ways:

- the position is a device tensor, not a Python int: rotary angles are gathered with it and the
  KV cache is written with ``index_copy_``;
- self-attention reads the whole preallocated KV cache, with a mask of the filled positions;
- the CCA keys/values, their mask and the chunk validity are copied into buffers owned here,
  overwritten in place each time a chunk completes;
- a token that completes a chunk is not graphed: it triggers retrieval and neighbour encoding
  (Python work, new shapes), so ``Retro.forward`` runs it.

On a CPU the same step runs without a graph.
"""

from __future__ import annotations

import contextlib

import torch

from model.network.chunk_passes import ChunkMemory, EncodedNeighbours
from model.network.retro import Retro, RetroCache


class StaticDecoder:
    """Runs the one-token steps of a :class:`Retro` decoding cache with fixed shapes.

    Args:
        model: the network (eval mode).
        cache: the cache of this generation, already filled by the prompt's forward pass.
        use_graphs: record and replay CUDA graphs; default: when the cache is on a CUDA device.
    """

    def __init__(self, model: Retro, cache: RetroCache, *, use_graphs: bool | None = None):
        self.model, self.cache = model, cache
        device = cache.chunk_h.device
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        if self.use_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need the model and its cache on a CUDA device")
        batch, max_len = cache.chunk_h.shape[0], cache.layers[0].k.shape[-2]
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(max_len, device=device)
        self.cca_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cca_mask: torch.Tensor | None = None  # (B, 1, 1, k·r) bool
        self.cca_valid: torch.Tensor | None = None  # (B,) bool: the chunk has neighbours
        self.cca_enc: EncodedNeighbours | None = None  # the two above as CCA reads them (its states are not read)
        self._copied: list[torch.Tensor] = []  # the cache's CCA tensors last copied (held, so `is` is safe)
        self.graphs: dict[bool, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after one new token per sequence, input_ids (B, 1); advances the cache."""
        cache, m = self.cache, self.model.config.chunk_tokens
        if cache.pos == 0:
            raise ValueError("run the prompt through the model first (Retro.forward with this cache)")
        if (cache.pos + 1) % m == 0:
            raise ValueError(f"the token at position {cache.pos} completes a chunk: run it through the model, which retrieves")
        attend = self._copy_cca()
        self.token.copy_(input_ids)
        self.pos.fill_(cache.pos)
        if self.use_graphs:
            graph, logits = self.graphs.get(attend) or self._capture(attend)
            graph.replay()
        else:
            logits = self._step(attend)
        cache.pos += 1
        return logits

    def _copy_cca(self) -> bool:
        """Bring the CCA buffers up to date with the cache; False when no CCA layer attends."""
        cache = self.cache
        if not cache.cca:
            return False
        current = [t for layer in sorted(cache.cca) for t in cache.cca[layer]] + [cache.enc.token_mask, cache.enc.chunk_valid]
        if len(current) == len(self._copied) and all(a is b for a, b in zip(current, self._copied)):
            return True
        mask = cache.enc.attn_mask
        if mask is None:  # every slot valid: an all-True mask gives the same attention
            mask = torch.ones_like(cache.enc.token_mask)[:, None, None, :]
        fresh = cache.cca
        shapes_match = (
            self.cca_mask is not None
            and self.cca_mask.shape == mask.shape
            and fresh.keys() == self.cca_kv.keys()
            and all(a.shape == b.shape for layer in fresh for a, b in zip(fresh[layer], self.cca_kv[layer]))
        )
        if shapes_match:
            for layer, (k, v) in fresh.items():
                self.cca_kv[layer][0].copy_(k)
                self.cca_kv[layer][1].copy_(v)
            self.cca_mask.copy_(mask)
            self.cca_valid.copy_(cache.enc.chunk_valid)
        else:  # first chunk, or new shapes: new buffers, so recorded graphs are stale
            self.cca_kv = {layer: (k.clone(), v.clone()) for layer, (k, v) in fresh.items()}
            self.cca_mask, self.cca_valid = mask.clone(), cache.enc.chunk_valid.clone()
            self.cca_enc = EncodedNeighbours(cache.enc.states, cache.enc.token_mask, self.cca_valid, self.cca_mask)
            self.graphs.pop(True, None)
        self._copied = current
        return True

    def _step(self, attend: bool) -> torch.Tensor:
        """``Retro.step`` for a token that completes no chunk, with no host sync: CCA reads the buffers here."""
        model, cache = self.model, self.cache
        filled = (self.slots <= self.pos).expand(self.token.shape[0], -1)  # (B, S) keys written so far
        memory = ChunkMemory(chunk_h=cache.chunk_h, enc=self.cca_enc if attend else None, cca=self.cca_kv)
        chunks = model.chunk_pass(None, None, memory, tokens=1, step=True, pos=self.pos)
        return model.step(self.token, chunks, cache.layers, self.pos, key_mask=filled)[:, -1]

    def _capture(self, attend: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm up on a side stream first (kernel selection, workspaces), as CUDA graphs require.
        # The warm-up steps write this token's keys at this position, as the replay will again.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(attend)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), _uncached_autocast():
            logits = self._step(attend)
        self.graphs[attend] = (graph, logits)
        return graph, logits


def _uncached_autocast():
    """The caller's CUDA autocast with its weight-cast cache off.

    Cached casts live outside the graph and are freed when the caller's autocast exits; a graph
    that read them would then read freed memory. Without the cache, the casts are recorded in it.
    """
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
