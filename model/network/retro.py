"""The RETRO network (Borgeaud et al. 2022) in one file: decoder, neighbour encoder, chunked cross-attention.

Read bottom-up: rotary positions, attention (self, cross, chunked cross), MLP, the decoder and
encoder blocks, the neighbour encoder, then :class:`Retro`. When a chunk's neighbours are encoded
and what each CCA layer reads is ``model.network.chunk_passes.ChunkPass``, shared with RETRO-fit. Axis names used in shape comments and
einops patterns:

    B batch · T tokens · L chunks (T // m) · m chunk tokens (64) · k neighbours per chunk
    r neighbour tokens (chunk + continuation, 128) · N = B·L · H heads · d head size · D width

Retrieval off is not a special case of the caller's making: ``neighbours=None`` (or a mask with
nothing valid) makes every CCA contribute exactly zero, so the logits equal those of the same
weights run with no neighbours at all.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from model.contracts.compat import Compatibility
from model.network.chunk_passes import ChunkMemory, ChunkPass, EncodedNeighbours, expand_mask
from model.network.config import RetroConfig

if TYPE_CHECKING:
    from model.contracts.retrieval import Neighbour
    from model.contracts.tokenizer import RetroTokenizer

LOG = logging.getLogger(__name__)

MODEL_TYPE = "retrofresh-retro"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
IGNORE_INDEX = -100  # targets with this value (padding) add nothing to the loss


# neighbours: from Neighbour lists to the tensors the network reads


def pack_neighbours(
    per_chunk: Sequence[Sequence["Neighbour | Sequence[int]"]],
    *,
    k: int,
    r: int,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad/truncate each chunk's neighbours to k × r token ids with a token-level validity mask.

    Args:
        per_chunk: one entry per chunk; each a list of ``Neighbour`` (their ``retrieved_tokens``
            are read) or plain token-id lists. Fewer than k, or shorter than r, is fine: the rest
            is masked. More than k: the first k are kept.
        k: neighbours per chunk.
        r: tokens per neighbour (chunk + continuation).
        pad_id: id written into masked slots (never attended).

    Returns:
        ``(ids, mask)``: ids long (L, k, r) and mask bool (L, k, r), True where a real token is.
    """
    ids = torch.full((len(per_chunk), k, r), pad_id, dtype=torch.long)
    mask = torch.zeros((len(per_chunk), k, r), dtype=torch.bool)
    for u, neighbours in enumerate(per_chunk):
        for j, nb in enumerate(list(neighbours)[:k]):
            tokens = list(nb.retrieved_tokens if hasattr(nb, "retrieved_tokens") else nb)[:r]
            if tokens:
                ids[u, j, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                mask[u, j, : len(tokens)] = True
    return ids, mask


# rotary positions


class Rotary(nn.Module):
    """cos/sin tables for rotary position embeddings (RoFormer: adjacent dimension pairs rotate)."""

    def __init__(self, head_dim: int, max_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, d/2)
        # Not saved with the weights: they are a pure function of the config.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Angles of positions start … end-1, each (end-start, d/2); a slice, so no device sync."""
        if end > self.cos.shape[0]:
            raise ValueError(f"position {end - 1} is beyond the rotary table ({self.cos.shape[0]} positions)")
        return self.cos[start:end], self.sin[start:end]

    def at(self, pos: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Angles of one position, each (1, d/2); pos may be a (1,) device tensor (gathered: no host sync)."""
        if isinstance(pos, torch.Tensor):
            return self.cos.index_select(0, pos), self.sin.index_select(0, pos)
        return self(pos, pos + 1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, d) by per-position angles cos/sin (T, d/2); pairs are adjacent dims.

    One complex multiply instead of the rotate-half cat: about 4x faster forward + backward on CPU.
    Under torch.compile the same rotation is written in real arithmetic, which inductor fuses
    into one kernel (it generates no code for complex tensors and would fall back to eager).
    """
    if torch.compiler.is_compiling():
        return _apply_rotary_real(x, cos, sin)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (..., T, d/2)
    return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2).type_as(x)


def _apply_rotary_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rotary` without complex numbers: (a + ib)(cos + i sin) by components."""
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (..., T, d/2) each
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).type_as(x)


# attention


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection; causal (decoder) or not (encoder)."""

    def __init__(self, width: int, n_heads: int, head_dim: int, *, causal: bool, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim, self.causal, self.dropout = n_heads, head_dim, causal, dropout
        self.qkv = nn.Linear(width, 3 * n_heads * head_dim, bias=False)
        self.proj = nn.Linear(n_heads * head_dim, width, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        key_mask: torch.Tensor | None = None,
        cache: "LayerCache | None" = None,
        pos: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        # Plain view/permute on the per-token hot path (einops' parsing shows in batch-1 decoding).
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 × (B, H, T, d)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        causal = self.causal
        if cache is not None:
            k, v = cache.append(k, v, pos)  # (B, H, pos + T, d)
            # One new token may see every cached key; a longer first segment needs the causal mask.
            causal = self.causal and q.shape[-2] > 1
            if causal and pos > 0:
                raise ValueError("a multi-token step after the first needs an offset causal mask; feed one token")
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, d)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, H·d)


class CrossAttention(nn.Module):
    """Queries from one stream, keys/values from another (fused KV), with rotary on both sides."""

    def __init__(self, width: int, context_width: int, n_heads: int, head_dim: int, *, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, head_dim, dropout
        self.q = nn.Linear(width, n_heads * head_dim, bias=False)
        self.kv = nn.Linear(context_width, 2 * n_heads * head_dim, bias=False)
        self.proj = nn.Linear(n_heads * head_dim, width, bias=False)

    def keys_values(self, context: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project context (N, S, C) once into keys and values (N, H, S, d); keys rotated."""
        k, v = rearrange(self.kv(context), "n s (two h d) -> two n h s d", two=2, h=self.n_heads)
        return apply_rotary(k, cos, sin), v

    def attend(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        unrotated_query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (N, Q, D) attends to precomputed k, v (N, H, S, d); attn_mask broadcasts to (N, H, Q, S).

        unrotated_query (N, H, Q, d) is added to the rotated query: a part that matches keys by
        content alone, wherever they stand.
        """
        N, Q, _ = x.shape
        q = apply_rotary(self.q(x).view(N, Q, self.n_heads, self.head_dim).transpose(1, 2), cos, sin)  # (N, H, Q, d)
        if unrotated_query is not None:
            q = q + unrotated_query
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(N, Q, -1))  # (N, Q, H·d)


class ChunkedCrossAttention(nn.Module):
    """RETRO's CCA: tokens attend to the encoded neighbours of the chunk that ends just before them.

    With the causal shift of m−1, token t attends to the neighbours of chunk u = (t+1)//m − 1,
    retrieved with tokens u·m … u·m+m−1 ≤ t; tokens before m−1 attend to nothing. The sequence is
    shifted, cut into L windows of m tokens and run as one batched attention over (B·L).
    """

    def __init__(self, config: RetroConfig):
        super().__init__()
        self.m, self.r, self.n_heads = config.chunk_tokens, config.neighbour_tokens, config.n_heads
        self.attn = CrossAttention(config.d_model, config.enc_d_model, config.n_heads, config.head_dim, dropout=config.dropout)
        # Keys that also see the neighbour token before them: a query holding "the token I just read"
        # then finds where that token stands in a neighbour and reads the one after it, an induction
        # head in one step. Without it, copying needs a two-layer circuit that a small model trained
        # from scratch does not form in a CPU budget (docs/ARCHITECTURE.md, "Teaching a small model to copy").
        self.previous_key = (
            nn.Linear(config.enc_d_model, config.n_heads * config.head_dim, bias=False) if config.cca_previous_token_keys else None
        )
        # RETRO-fit: in a frozen pretrained base the hidden state at a late layer no longer holds the
        # token just read, so the query also reads that token's embedding. This part of the match
        # (token query · previous-token key) is not rotated: a token is found wherever it stands in
        # a neighbour (rotated, the match fades with distance and the head barely copies at step 0).
        # The caller hands in [norm(h); norm(token embedding)].
        self.token_query = nn.Linear(config.d_model, config.n_heads * config.head_dim, bias=False) if config.cca_token_query else None

    @torch.no_grad()
    def init_as_induction_head(self) -> None:
        """Start as a copy circuit: query, previous-token key, value and output projections the identity.

        The query is then the token just read (layer-normed), the key of neighbour position j its
        token j−1, and the value token j: attention lands where the query's token stands in a
        neighbour and adds the token after it to the residual stream, which the tied output
        embedding reads as that token. Trained from the usual small random init, the same circuit
        did not form in 300 steps of a pure copy task; from this init it copies from the first steps.
        """
        hd = self.attn.q.weight.shape[0]
        eye = torch.eye(hd, device=self.attn.q.weight.device, dtype=self.attn.q.weight.dtype)
        for weight in (self.previous_key.weight, self.attn.kv.weight[hd:], self.attn.proj.weight):
            weight.copy_(eye)
        if self.token_query is None:
            self.attn.q.weight.copy_(eye)
        else:  # the token matches at first; the hidden-state query starts at zero and learns what else to ask
            self.token_query.weight.copy_(eye)
            self.attn.q.weight.zero_()

    def keys_values(self, enc: EncodedNeighbours, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (N, H, k·r, d) of the encoded neighbours, keys rotated."""
        k, v = self.attn.keys_values(enc.states, cos, sin)
        if self.previous_key is None:
            return k, v
        states = rearrange(enc.states, "n (k r) e -> n k r e", r=self.r)
        before = F.pad(states[:, :, :-1], (0, 0, 1, 0))  # token j-1 of the same neighbour; zeros before its first
        extra = rearrange(self.previous_key(before), "n k r (h d) -> n h (k r) d", h=self.n_heads)
        if self.token_query is not None:
            return k + extra, v  # matched by the unrotated token query
        return k + apply_rotary(extra, cos, sin), v  # rotation is linear: rot(a) + rot(b) = rot(a + b)

    def split_query(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (N, Q, D or 2D) → the hidden-state query input and the unrotated token query (N, H, Q, d), or None."""
        if self.token_query is None:
            return x, None
        h, token = x.chunk(2, dim=-1)
        N, Q, _ = token.shape
        return h, self.token_query(token).view(N, Q, self.n_heads, -1).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        enc: EncodedNeighbours,
        q_cos: torch.Tensor,
        q_sin: torch.Tensor,
    ) -> torch.Tensor:
        """x (B, T, D) → (B, T, D); k, v (B·L, H, k·r, d) from :meth:`keys_values`."""
        m = self.m
        B, T, _ = x.shape
        L = k.shape[0] // B
        attending = x[:, m - 1 :]  # token m-1 is the first that has a completed chunk
        n = attending.shape[1]  # <= L·m because L = T // m
        attending = F.pad(attending, (0, 0, 0, L * m - n))  # (B, L·m, D)
        q, token_q = self.split_query(rearrange(attending, "b (l m) d -> (b l) m d", m=m))
        y = self.attn.attend(q, k, v, q_cos, q_sin, enc.attn_mask, token_q)  # (B·L, m, D)
        if enc.attn_mask is not None:  # some chunk may have no neighbours: its output is exactly zero
            y = y * rearrange(enc.chunk_valid, "n -> n 1 1").to(y.dtype)
        y = rearrange(y, "(b l) m d -> b (l m) d", b=B)[:, :n]
        return F.pad(y, (0, 0, m - 1, 0))  # (B, T, D): the first m-1 tokens get nothing

    def step(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        enc: EncodedNeighbours,
        q_cos: torch.Tensor,
        q_sin: torch.Tensor,
    ) -> torch.Tensor:
        """One new token per sequence, x (B, 1, D), against one chunk's cached k, v (B, H, k·r, d)."""
        x, token_q = self.split_query(x)
        y = self.attn.attend(x, k, v, q_cos, q_sin, enc.attn_mask, token_q)  # (B, 1, D)
        if enc.attn_mask is None:
            return y
        return y * enc.chunk_valid[:, None, None].to(y.dtype)  # (B, 1, D)


# feed-forward


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float, dropout: float):
        super().__init__()
        hidden = int(ratio * width)
        self.fc = nn.Linear(width, hidden, bias=False)
        self.proj = nn.Linear(hidden, width, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


# blocks


class DecoderBlock(nn.Module):
    """Pre-norm ATTN → (CCA if this layer has one) → FFW, as in the paper's RETRO block.

    Args:
        config: the network's shape.
        layer: this block's 1-based number; it has CCA when it is one of ``config.cca_layers``.
    """

    def __init__(self, config: RetroConfig, layer: int):
        super().__init__()
        D = config.d_model
        self.layer = layer
        has_cca = layer in config.cca_layers
        self.ln_attn = nn.LayerNorm(D, eps=config.norm_eps, bias=False)
        self.attn = SelfAttention(D, config.n_heads, config.head_dim, causal=True, dropout=config.dropout)
        self.ln_cca = nn.LayerNorm(D, eps=config.norm_eps, bias=False) if has_cca else None
        self.cca = ChunkedCrossAttention(config) if has_cca else None
        self.ln_mlp = nn.LayerNorm(D, eps=config.norm_eps, bias=False)
        self.mlp = MLP(D, config.mlp_ratio, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, chunks: ChunkPass, cache: "LayerCache | None" = None) -> torch.Tensor:
        """The residual stream x (B, T, D) of tokens 0 … T−1 through this block; cache: filled from position 0."""
        x = x + self.dropout(self.attn(self.ln_attn(x), cos, sin, cache=cache, pos=0))
        if self.cca is not None:
            x = chunks.cross_attend(self.layer, x, self.ln_cca, self.cca, self.dropout)
        return x + self.mlp(self.ln_mlp(x))

    def step(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        chunks: ChunkPass,
        cache: "LayerCache",
        pos: int | torch.Tensor,
        *,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One new token per sequence, x (B, 1, D), at position pos; key_mask: the cache slots written (static steps)."""
        x = x + self.attn(self.ln_attn(x), cos, sin, key_mask=key_mask, cache=cache, pos=pos)
        if self.cca is not None:
            x = chunks.cross_attend(self.layer, x, self.ln_cca, self.cca)
        return x + self.mlp(self.ln_mlp(x))


class EncoderBlock(nn.Module):
    """Bidirectional ATTN over one neighbour → CA to the decoder's chunk activations → FFW."""

    def __init__(self, config: RetroConfig):
        super().__init__()
        De, He = config.enc_d_model, config.enc_n_heads
        self.ln_attn = nn.LayerNorm(De, eps=config.norm_eps, bias=False)
        self.attn = SelfAttention(De, He, De // He, causal=False, dropout=config.dropout)
        self.ln_ca = nn.LayerNorm(De, eps=config.norm_eps, bias=False)
        self.ca = CrossAttention(De, config.d_model, He, De // He, dropout=config.dropout)
        self.ln_mlp = nn.LayerNorm(De, eps=config.norm_eps, bias=False)
        self.mlp = MLP(De, config.mlp_ratio, config.dropout)

    def forward(
        self,
        h: torch.Tensor,
        context: torch.Tensor,
        *,
        k: int,
        self_mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor],
        context_rotary: tuple[torch.Tensor, torch.Tensor],
        query_rotary: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """h (N·k, r, De) neighbour tokens, context (N, m, D) their chunk's normed activations → (N·k, r, De)."""
        h = h + self.attn(self.ln_attn(h), *rotary, key_mask=self_mask)
        # Every neighbour token of a chunk reads the same m activations, so the k neighbours
        # are one batch row of k·r queries: no copy of the chunk per neighbour.
        h = rearrange(h, "(n k) r e -> n (k r) e", k=k)
        ck, cv = self.ca.keys_values(context, *context_rotary)  # (N, He, m, d)
        h = h + self.ca.attend(self.ln_ca(h), ck, cv, *query_rotary, None)
        h = rearrange(h, "n (k r) e -> (n k) r e", k=k)
        return h + self.mlp(self.ln_mlp(h))


class NeighbourEncoder(nn.Module):
    """Encodes each neighbour (r tokens) conditioned on the activations of the chunk it was retrieved for."""

    def __init__(self, config: RetroConfig):
        super().__init__()
        self.config = config
        self.proj_in = nn.Linear(config.d_model, config.enc_d_model, bias=False) if config.enc_d_model != config.d_model else nn.Identity()
        self.ln_context = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.enc_layers))
        self.ln_f = nn.LayerNorm(config.enc_d_model, eps=config.norm_eps, bias=False)
        self.rotary = Rotary(config.enc_d_model // config.enc_n_heads, max(config.neighbour_tokens, config.chunk_tokens), config.rope_theta)

    def forward(self, emb: torch.Tensor, token_mask: torch.Tensor, chunk_h: torch.Tensor) -> EncodedNeighbours:
        """Encode neighbours.

        Args:
            emb: token embeddings of the neighbours, (N, k, r, D).
            token_mask: (N, k, r) bool, True on real tokens.
            chunk_h: the decoder's activations of each neighbour's chunk, (N, m, D).

        Returns:
            The encoded neighbours, flattened to (N, k·r, De).
        """
        N, k, r, _ = emb.shape
        m = chunk_h.shape[1]
        r_cos, r_sin = self.rotary(0, r)
        m_cos, m_sin = self.rotary(0, m)
        nb_valid = token_mask.any(-1)  # (N, k)
        # A fully masked neighbour would make its softmax rows NaN; open it (it is never attended).
        self_mask = rearrange(token_mask | ~nb_valid[..., None], "n k r -> (n k) r")
        if not torch.compiler.is_compiling() and bool(self_mask.all()):  # as EncodedNeighbours.attn_mask
            self_mask = None
        context = self.ln_context(chunk_h)
        h = rearrange(self.proj_in(emb), "n k r e -> (n k) r e")
        ca_cos, ca_sin = r_cos.repeat(k, 1), r_sin.repeat(k, 1)  # (k·r, d/2): positions restart per neighbour
        for block in self.blocks:
            h = block(h, context, k=k, self_mask=self_mask, rotary=(r_cos, r_sin), context_rotary=(m_cos, m_sin), query_rotary=(ca_cos, ca_sin))
        states = rearrange(self.ln_f(h), "(n k) r e -> n (k r) e", k=k)
        return EncodedNeighbours.of(states, rearrange(token_mask, "n k r -> n (k r)"), nb_valid.any(-1))

    def encode(self, embed: nn.Module, neighbours: torch.Tensor, neighbour_mask: torch.Tensor | None, chunk_h: torch.Tensor) -> EncodedNeighbours:
        """Encode (B, L, k, r) neighbour ids given the decoder's chunk activations (B, L·m, D).

        Args:
            embed: the decoder's token embedding (RETRO-fit: the base model's, frozen).
            neighbours: (B, L, k, r) token ids.
            neighbour_mask: see :func:`model.network.chunk_passes.expand_mask`.
            chunk_h: activations of the L chunks at the first CCA layer.
        """
        L = neighbours.shape[1]
        token_mask = expand_mask(neighbours, neighbour_mask)
        emb = embed(rearrange(neighbours, "b l k r -> (b l) k r"))  # (N, k, r, D)
        chunk_h = rearrange(chunk_h, "b (l m) d -> (b l) m d", l=L)
        return self(emb, rearrange(token_mask, "b l k r -> (b l) k r"), chunk_h)


# generation cache


class LayerCache:
    """Preallocated keys/values of one decoder layer's self-attention."""

    def __init__(self, batch: int, n_heads: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.zeros(batch, n_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def append(self, k: torch.Tensor, v: torch.Tensor, pos: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys/values at pos; return those of every position so far.

        pos may be a (1,) device tensor (static shapes, see model.network.decoding): then the one token is
        written in place and the whole buffer comes back, for the caller to mask unfilled slots.
        """
        if isinstance(pos, torch.Tensor):
            self.k.index_copy_(2, pos, k.to(self.k.dtype))
            self.v.index_copy_(2, pos, v.to(self.v.dtype))
            return self.k, self.v
        end = pos + k.shape[-2]
        if end > self.k.shape[-2]:
            raise ValueError(f"KV cache holds {self.k.shape[-2]} tokens; position {end} is past it")
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


@dataclass
class RetroCache(ChunkMemory):
    """Decoding state: each layer's self-attention KV, plus the chunk state of :class:`model.network.chunk_passes.ChunkMemory`."""

    layers: list[LayerCache] = field(default_factory=list)


# the model


class Retro(nn.Module):
    """A RETRO decoder with its neighbour encoder.

    Args:
        config: the network's shape.
    """

    def __init__(self, config: RetroConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(DecoderBlock(config, i + 1) for i in range(config.n_layers))
        self.encoder = NeighbourEncoder(config)
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.rotary = Rotary(config.head_dim, max(config.max_seq_len, 2 * config.chunk_tokens, config.neighbour_tokens), config.rope_theta)
        self.apply(self._init_weights)
        # Residual projections scaled by depth (GPT-2), so the stream's variance does not grow with layers.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.cca_previous_token_keys:
            for block in self.blocks:
                if block.cca is not None:
                    block.cca.init_as_induction_head()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # forward

    def encode_neighbours(self, neighbours: torch.Tensor, neighbour_mask: torch.Tensor | None, chunk_h: torch.Tensor) -> EncodedNeighbours:
        """Encode (B, L, k, r) neighbours given the decoder's chunk activations (B, L·m, D)."""
        return self.encoder.encode(self.wte, neighbours, neighbour_mask, chunk_h)

    def chunk_pass(self, neighbours, neighbour_mask, cache: ChunkMemory | None, *, tokens: int, step: bool, pos=None) -> ChunkPass:
        """The chunk bookkeeping of one pass through this network (see :class:`model.network.chunk_passes.ChunkPass`)."""
        return ChunkPass(self.config, self.rotary, self.encode_neighbours, neighbours, neighbour_mask, cache, tokens=tokens, step=step, pos=pos)

    def _check_inputs(self, input_ids: torch.Tensor, neighbours: torch.Tensor | None, step: bool) -> None:
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if not step and T > cfg.max_seq_len:
            raise ValueError(f"{T} tokens exceed max_seq_len={cfg.max_seq_len}")
        if neighbours is None or step:
            return
        L = T // cfg.chunk_tokens
        if neighbours.dim() != 4 or neighbours.shape[0] != B or neighbours.shape[1] != L:
            raise ValueError(
                f"neighbours must be (B={B}, L=T//m={L}, k, r) for {T} tokens, got {tuple(neighbours.shape)}"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        neighbours: torch.Tensor | None = None,
        neighbour_mask: torch.Tensor | None = None,
        *,
        targets: torch.Tensor | None = None,
        cache: RetroCache | None = None,
    ):
        """Logits for every position.

        Args:
            input_ids: (B, T) token ids.
            neighbours: (B, T//m, k, r) neighbour token ids, one set per complete chunk; None: no
                retrieval. With a cache past position 0 (one token per step), (B, 1, k, r) for the
                chunk this token completes, or None.
            neighbour_mask: (B, L, k) or (B, L, k, r) bool, True where a neighbour (token) exists.
            targets: (B, T) next-token ids; ``IGNORE_INDEX`` where nothing is to be predicted.
            cache: a :meth:`new_cache` for incremental decoding; None for a plain forward.

        Returns:
            logits (B, T, V); with targets, ``(logits, loss)`` (mean cross-entropy in nats).
        """
        step = cache is not None and cache.pos > 0
        self._check_inputs(input_ids, neighbours, step)
        T = input_ids.shape[1]
        chunks = self.chunk_pass(neighbours, neighbour_mask, cache, tokens=T, step=step)
        if step:
            logits = self.step(input_ids, chunks, cache.layers, cache.pos)
        else:
            cos, sin = self.rotary(0, T)
            x = self.wte(input_ids)
            for i, block in enumerate(self.blocks):
                x = block(x, cos, sin, chunks, cache.layers[i] if cache is not None else None)
            logits = self.lm_head(self.ln_f(x))
        chunks.finish()
        if targets is None:
            return logits
        loss = F.cross_entropy(rearrange(logits.float(), "b t v -> (b t) v"), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def step(
        self,
        input_ids: torch.Tensor,
        chunks: ChunkPass,
        layers: list[LayerCache],
        pos: int | torch.Tensor,
        *,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, 1, V) of one new token per sequence at pos; advances nothing (``chunks.finish`` does).

        ``forward`` with a cache calls this; so do the static steps of ``model.network.decoding``, with pos
        a device tensor and key_mask the cache slots written.
        """
        cos, sin = self.rotary.at(pos)
        x = self.wte(input_ids)
        for block, layer in zip(self.blocks, layers):
            x = block.step(x, cos, sin, chunks, layer, pos, key_mask=key_mask)
        return self.lm_head(self.ln_f(x))

    def new_cache(self, batch_size: int, max_len: int | None = None, *, device=None, dtype=None) -> RetroCache:
        """An empty decoding cache for up to max_len tokens (default: max_seq_len)."""
        cfg = self.config
        param = next(self.parameters())
        device = device or param.device
        dtype = dtype or param.dtype
        max_len = max_len or cfg.max_seq_len
        layers = [LayerCache(batch_size, cfg.n_heads, max_len, cfg.head_dim, device, dtype) for _ in range(cfg.n_layers)]
        return RetroCache(layers=layers, chunk_h=torch.zeros(batch_size, cfg.chunk_tokens, cfg.d_model, device=device, dtype=dtype))

    # checkpoints

    def save_pretrained(self, directory: str | Path, tokenizer: "RetroTokenizer | None" = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``) into a directory.

        Args:
            directory: created if missing; existing files of the same names are replaced.
            tokenizer: saved beside the weights; its name and sha256 are recorded in the config.

        Returns:
            The directory.
        """
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if tokenizer is not None:
            Compatibility.of(tokenizer=tokenizer, source=f"the tokenizer given ({tokenizer.name})", kind="run").check(
                Compatibility.of_config(self.config, source="this model"), terms=("tokenizer",),
                fix="save the model with the tokenizer it was built for",
            )
            self.config.tokenizer = tokenizer.info
            tokenizer.save(directory)
        write_config(directory, MODEL_TYPE, self.config.to_dict())
        save_model(self, str(directory / WEIGHTS_FILE))  # handles the tied embedding / lm_head
        LOG.info("saved %s (%d params) to %s", MODEL_TYPE, self.num_params(), directory)
        return directory

    def load_weights(self, directory: str | Path) -> None:
        """Load ``model.safetensors`` from a checkpoint directory into this (same-shaped) model."""
        from safetensors.torch import load_model

        load_model(self, str(Path(directory) / WEIGHTS_FILE), strict=True, device=str(next(self.parameters()).device))

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> "Retro":
        """Load a model written by :meth:`save_pretrained`.

        Args:
            directory: the checkpoint directory.
            device: where to put the weights.

        Returns:
            The model, in eval mode.
        """
        from safetensors.torch import load_model

        directory = Path(directory)
        config = config_from(directory, read_config(directory, MODEL_TYPE))
        model = cls(config)
        try:
            load_model(model, str(directory / WEIGHTS_FILE), strict=True, device=str(device))
        except RuntimeError as exc:  # missing, unexpected or misshapen tensors
            raise ValueError(f"{directory / WEIGHTS_FILE} does not fit the model {directory / CONFIG_FILE} describes: "
                             f"{str(exc)[:500]}; keep the two files of one checkpoint together") from None
        model.to(device)
        return model.eval()


def write_config(directory: Path, model_type: str, fields: dict) -> None:
    """``config.json`` stamped with the model type and format version."""
    data = {"model_type": model_type, "format_version": FORMAT_VERSION, **fields}
    (directory / CONFIG_FILE).write_text(json.dumps(data, indent=2, sort_keys=True))


def load_config_json(directory: str | Path) -> dict:
    """A checkpoint's ``config.json`` as a dict; every error names the file.

    Raises:
        FileNotFoundError: there is none.
        ValueError: it is not UTF-8 JSON holding an object.
    """
    file = Path(directory) / CONFIG_FILE
    if not file.exists():
        raise FileNotFoundError(f"{directory} is not a retrofresh checkpoint: no {CONFIG_FILE}; name the directory `retrofresh train --out` "
                                f"or save_pretrained wrote ({CONFIG_FILE} beside {WEIGHTS_FILE})")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON ({exc}); restore the checkpoint's {CONFIG_FILE} or save the model again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} holds a JSON {type(data).__name__}, not an object; restore the checkpoint's {CONFIG_FILE}")
    return data


def config_from(directory: str | Path, data: dict) -> RetroConfig:
    """The ``RetroConfig`` of ``config.json``'s fields, an error naming the file if they do not make one."""
    try:
        return RetroConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{Path(directory) / CONFIG_FILE}: {exc}; restore the checkpoint's {CONFIG_FILE}, or load it with "
                         "the retrofresh version that wrote it") from None


def read_config(directory: Path, model_type: str) -> dict:
    """The fields of ``config.json``, after checking it is a checkpoint of ``model_type`` we can read."""
    file = Path(directory) / CONFIG_FILE
    data = load_config_json(directory)
    found = data.pop("model_type", None)
    version = data.pop("format_version", None)
    if found != model_type:
        raise ValueError(f"{file} holds model_type {found!r}, expected {model_type!r}")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{file} has format_version {version!r}; this code reads up to {FORMAT_VERSION}")
    if not (Path(directory) / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE}")
    return data
