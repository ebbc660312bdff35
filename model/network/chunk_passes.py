"""Chunk completion: when a chunk's neighbours are encoded, and what every CCA layer attends to.

RETRO conditions on neighbours one chunk (m = 64 tokens) at a time: when token u·m + m − 1 has
been read, chunk u is complete, its neighbours are encoded once (the encoder reads the decoder's
activations of that chunk at the first CCA layer) and every CCA layer projects them into keys and
values that the next m tokens attend to. That bookkeeping lives here, once, in
:class:`ChunkPass`; the RETRO decoder blocks (``model.network.retro``), RETRO-fit's CCA blocks
(``model.network.retrofit``) and the static one-token steps (``model.network.decoding``) all run their CCA
through :meth:`ChunkPass.cross_attend`.

Layers are named by their 1-based number, as in ``RetroConfig.cca_layers``. The network's own
modules (``Rotary``, ``ChunkedCrossAttention``) come in as arguments: this module sits below
``model.network.retro`` and imports nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from einops import rearrange

from model.network.config import RetroConfig


def expand_mask(neighbours: torch.Tensor, neighbour_mask: torch.Tensor | None) -> torch.Tensor:
    """A (B, L, k, r) token mask from None (all valid), (B, L, k) per-neighbour or (B, L, k, r)."""
    if neighbour_mask is None:
        return torch.ones(neighbours.shape, dtype=torch.bool, device=neighbours.device)
    if neighbour_mask.dtype != torch.bool:
        raise TypeError(f"neighbour_mask must be bool, got {neighbour_mask.dtype}")
    if neighbour_mask.shape == neighbours.shape[:3]:
        return neighbour_mask.unsqueeze(-1).expand(neighbours.shape)
    if neighbour_mask.shape == neighbours.shape:
        return neighbour_mask
    raise ValueError(
        f"neighbour_mask has shape {tuple(neighbour_mask.shape)}; expected {tuple(neighbours.shape[:3])} "
        f"(per neighbour) or {tuple(neighbours.shape)} (per token)"
    )


@dataclass
class EncodedNeighbours:
    """Encoded neighbours of L chunks per sequence, and which of them may be attended.

    Build with :meth:`of`, which derives ``attn_mask``; only the static steps of
    ``model.network.decoding`` give their own (fixed buffers, no host sync).
    """

    states: torch.Tensor  # (N, k·r, De) encoder output, N = B·L
    token_mask: torch.Tensor  # (N, k·r) bool, True where a real neighbour token is
    chunk_valid: torch.Tensor  # (N,) bool, False where a chunk has no neighbour at all
    # (N, 1, 1, k·r) SDPA mask, rows of empty chunks fully open (their output is zeroed after);
    # None when every slot is valid. Set once per encoding (a host sync), read by every CCA layer.
    attn_mask: torch.Tensor | None

    @classmethod
    def of(cls, states: torch.Tensor, token_mask: torch.Tensor, chunk_valid: torch.Tensor) -> "EncodedNeighbours":
        # All valid: the unmasked kernel is faster. A compiled graph keeps the mask rather than
        # break on the host sync (same result).
        if not torch.compiler.is_compiling() and bool(token_mask.all()):
            return cls(states, token_mask, chunk_valid, None)
        open_rows = token_mask | ~chunk_valid[:, None]  # an all-False row would give NaN
        return cls(states, token_mask, chunk_valid, rearrange(open_rows, "n s -> n 1 1 s"))

    def last_chunks(self, batch: int) -> "EncodedNeighbours":
        """The encoded neighbours of each sequence's last chunk (what the next tokens attend to)."""
        pick = lambda t: rearrange(t, "(b l) ... -> b l ...", b=batch)[:, -1]  # noqa: E731
        return EncodedNeighbours.of(pick(self.states), pick(self.token_mask), pick(self.chunk_valid))


@dataclass
class ChunkMemory:
    """What decoding keeps about chunks between steps; RETRO's and RETRO-fit's caches extend it.

    ``cca`` holds, per CCA layer, the keys/values of the encoded neighbours that the next tokens
    attend to (those of the last completed chunk, ``enc``); neighbours are encoded once per chunk.
    """

    chunk_h: torch.Tensor  # (B, m, D) activations of the chunk being written, at the first CCA layer
    pos: int = 0  # tokens read so far
    enc: EncodedNeighbours | None = None
    cca: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


# (neighbours (B, L, k, r), neighbour_mask, chunk activations (B, L·m, D)) -> their encoding
Encode = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], EncodedNeighbours]


class ChunkPass:
    """The chunk bookkeeping of one forward pass (tokens 0 … T−1) or one cached step (one token).

    A full pass encodes the neighbours of its L = T // m complete chunks at once, and with a
    ``memory`` keeps the unfinished chunk's activations and the last chunk's keys/values for the
    steps after it. A step writes its token's activations into the chunk being written; when the
    token completes that chunk, its neighbours are encoded (once) and each CCA layer's keys/values
    are made from that encoding; the next m tokens reuse them.

    Args:
        config: the network's shape (m, the CCA layers).
        rotary: the ``model.network.retro.Rotary`` table of CCA queries and neighbour keys.
        encode: embeds and encodes neighbours given the chunks' activations.
        neighbours: (B, L, k, r) token ids; in a step, (B, 1, k, r) only when it completes a chunk. None: no retrieval.
        neighbour_mask: (B, L, k) or (B, L, k, r) bool, True where a neighbour (token) exists.
        memory: the decoding cache; None for a plain forward.
        tokens: T, the tokens of a full pass (a step has one).
        step: one cached token at ``pos``.
        pos: the step's position; default ``memory.pos``. A (1,) device tensor for the static
            steps of ``model.network.decoding``, which never complete a chunk and call no :meth:`finish`.
    """

    def __init__(
        self,
        config: RetroConfig,
        rotary: nn.Module,
        encode: Encode,
        neighbours: torch.Tensor | None,
        neighbour_mask: torch.Tensor | None,
        memory: ChunkMemory | None,
        *,
        tokens: int,
        step: bool = False,
        pos: int | torch.Tensor | None = None,
    ):
        m = self.m = config.chunk_tokens
        self.first_layer = config.cca_layers[0]
        self.encode, self.neighbours, self.neighbour_mask = encode, neighbours, neighbour_mask
        self.memory, self.step, self.tokens = memory, step, tokens
        self.pos = pos = (memory.pos if pos is None else pos) if step else 0
        if neighbours is not None and neighbours.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
            raise TypeError(f"neighbours must hold token ids (integer dtype), got {neighbours.dtype}")
        if step:
            if tokens != 1:
                raise ValueError(f"after the first forward, a cached step takes one token per sequence, got {tokens}")
            self.completes_chunk = isinstance(pos, int) and (pos + 1) % m == 0
            if neighbours is not None and (not self.completes_chunk or neighbours.shape[:2] != (memory.chunk_h.shape[0], 1)):
                raise ValueError(f"neighbours at position {pos} must be None or (B, 1, k, r) and only when a chunk completes")
            self.enc = memory.enc
            self.q_rotary = rotary.at(m - 1 + (pos + 1) % m)  # its place in the attending window (ChunkedCrossAttention)
        else:
            self.enc = None
            if neighbours is not None:
                # Query i of an attending window sits m-1+i tokens after the start of the chunk its
                # neighbours were retrieved for.
                self.q_rotary = rotary(m - 1, 2 * m - 1)
        if neighbours is not None:  # neighbour positions restart at 0 for each of the k
            n_nb, r = neighbours.shape[2:]
            self.k_rotary = tuple(t.repeat(n_nb, 1) for t in rotary(0, r))

    def record(self, h: torch.Tensor) -> None:
        """Keep the activations h (B, T, D) at the first CCA layer; encode the neighbours of chunks they complete."""
        memory, m = self.memory, self.m
        if self.step:
            if isinstance(self.pos, torch.Tensor):
                memory.chunk_h.index_copy_(1, self.pos % m, h.to(memory.chunk_h.dtype))
            else:
                memory.chunk_h[:, self.pos % m] = h[:, 0]
            if self.completes_chunk:  # this token finishes a chunk: its neighbours are encoded now, once
                memory.cca.clear()
                memory.enc = None
                if self.neighbours is not None:
                    memory.enc = self.encode(self.neighbours, self.neighbour_mask, memory.chunk_h)
                self.enc = memory.enc
            return
        T = self.tokens
        L = T // m
        if memory is not None:
            memory.chunk_h[:, : T - L * m] = h[:, L * m :]  # the unfinished chunk, for later steps
        if self.neighbours is not None and L > 0:
            self.enc = self.encode(self.neighbours, self.neighbour_mask, h[:, : L * m])

    def cross_attend(
        self,
        layer: int,
        x: torch.Tensor,
        norm: nn.Module,
        cca: nn.Module,
        dropout: nn.Module | None = None,
    ) -> torch.Tensor:
        """The residual stream x (B, T, D) after CCA layer ``layer``: x + CCA(norm(x)), or x with nothing to attend.

        Args:
            layer: the layer's 1-based number.
            x: its input.
            norm: the layer's pre-CCA norm.
            cca: its ``model.network.retro.ChunkedCrossAttention``.
            dropout: applied to the CCA output (training); None: none.
        """
        if layer == self.first_layer:
            self.record(x)
        enc, memory = self.enc, self.memory
        if enc is None:
            return x
        if self.step:
            kv = memory.cca.get(layer)
            if kv is None:  # the first step after its chunk completed
                kv = memory.cca[layer] = cca.keys_values(enc, *self.k_rotary)
            y = cca.step(norm(x), *kv, enc, *self.q_rotary)
        else:
            kv = cca.keys_values(enc, *self.k_rotary)
            y = cca(norm(x), *kv, enc, *self.q_rotary)
            if memory is not None:  # the next tokens attend to the last chunk's neighbours
                memory.cca[layer] = tuple(rearrange(t, "(b l) h s d -> b l h s d", b=x.shape[0])[:, -1] for t in kv)
        return x + (y if dropout is None else dropout(y))

    def finish(self) -> None:
        """Advance the memory past this pass's tokens."""
        memory = self.memory
        if memory is None:
            return
        if self.step:
            memory.pos = self.pos + 1
            return
        memory.pos = self.tokens
        memory.enc = self.enc.last_chunks(memory.chunk_h.shape[0]) if self.enc is not None else None
        if self.enc is None:
            memory.cca.clear()
