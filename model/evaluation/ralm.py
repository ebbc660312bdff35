"""In-Context RALM (Ram et al. 2023): a frozen causal LM that reads retrieved neighbours as text prepended to its context.

What a user would pick instead of RETRO-fitting: no new weights at all. The text is scored chunk
by chunk (every ``chunk_tokens``, as RETRO retrieves); chunk ``u`` is predicted from::

    [neighbour k] SEP ... [neighbour 1] SEP [up to prefix_tokens of the text before chunk u] [chunk u]

where the neighbours are those retrieved for chunk ``u - 1`` (the query is the previous chunk, so
nothing of chunk ``u`` is seen before it is predicted), each its chunk plus continuation, the best
one nearest to the text. Chunk 0 has no previous chunk and reads no neighbour. With no neighbours
(retrieval off, or the ``prepend-none`` condition) the same windows are scored with nothing
prepended: that is the base LM alone, a different model from RETRO's ``none``.

The temporal evaluation calls :meth:`InContextRALM.token_losses` where it calls
:func:`model.network.scoring.token_losses` for a RETRO model; everything else (neighbours, own-document
exclusion, the 13-gram filter, overlap buckets, bootstrap) is shared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from model.contracts.retrieval import Neighbour

LOG = logging.getLogger(__name__)

PREFIX_TOKENS = 384  # the text's own tokens kept before the scored chunk (the measurements: 384)
SEPARATOR = "\n\n"  # between prepended neighbours, and between them and the text


@dataclass(frozen=True)
class RALMShape:
    """The part of a model's config the evaluation reads (``chunk_tokens``), as ``model.config`` of a RETRO model."""

    chunk_tokens: int
    prefix_tokens: int = PREFIX_TOKENS


class InContextRALM:
    """A frozen Hugging Face causal LM that scores a text with neighbours' text prepended to each chunk's window.

    Args:
        base: an ``AutoModelForCausalLM`` (kept frozen, in eval mode).
        tokenizer: its tokenizer as a :class:`model.contracts.tokenizer.RetroTokenizer`.
        chunk_tokens: the retrieval stride and scored chunk (the store's chunk size).
        prefix_tokens: the text's own tokens kept before each scored chunk (a multiple of ``chunk_tokens``).
        name: how reports name the base.
        precision: "fp32" (the reference), "bf16" or "auto" (:mod:`model.contracts.precision`).
    """

    def __init__(self, base, tokenizer, *, chunk_tokens: int = 64, prefix_tokens: int = PREFIX_TOKENS, name: str | None = None,
                 precision="fp32"):
        if chunk_tokens < 1 or prefix_tokens < 1:
            # At least one token of the text itself before each chunk, so its first token has a context.
            raise ValueError(f"chunk_tokens and prefix_tokens must be >= 1, got {chunk_tokens} and {prefix_tokens}")
        self.base = base.eval()
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = RALMShape(chunk_tokens, prefix_tokens)
        self.name = name or getattr(tokenizer, "name", "base")
        from model.contracts.precision import resolve

        self.precision = resolve(precision, self.device)
        self.separator_text = SEPARATOR
        self.separator = tokenizer.encode(SEPARATOR)
        self.max_positions = getattr(base.config, "max_position_embeddings", None) or getattr(base.config, "n_positions", None)
        # The last document's per-chunk losses by the neighbours read: the 13-gram-filtered pass
        # rescores only the chunks whose neighbours the filter changed.
        self._memo_key: tuple | None = None
        self._memo: dict[tuple, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def window(self, ids: list[int], u: int, neighbours: list[list[int]]) -> tuple[list[int], int]:
        """The tokens fed to predict chunk ``u`` and the index in them of the chunk's first token."""
        m, p = self.config.chunk_tokens, self.config.prefix_tokens
        start = u * m
        context: list[int] = []
        for tokens in reversed(neighbours):  # the best neighbour last, next to the text
            context += list(tokens) + self.separator
        context += ids[max(0, start - p) : start]
        return context + ids[start : start + m], len(context)

    @torch.inference_mode()
    def _chunk_losses(self, window: list[int], first: int) -> torch.Tensor:
        """Nats of window[first:] given what precedes each (the very first token of a text is not predicted)."""
        if self.max_positions and len(window) > self.max_positions:
            raise ValueError(f"a window of {len(window)} tokens is longer than {self.name}'s {self.max_positions} positions; "
                             "use fewer neighbours or a shorter prefix")
        from model.contracts.precision import autocast

        x = torch.tensor([window], device=self.device)
        positions = torch.arange(max(first - 1, 0), len(window) - 1, device=self.device)
        with autocast(self.precision, self.device):
            # The backbone's hidden states, then the head on the scored positions only: the full
            # (T, vocab) logits of a 49k-word vocabulary would cost more than the layers.
            hidden = self.base.base_model(input_ids=x, use_cache=False).last_hidden_state[0]
            logits = self.base.get_output_embeddings()(hidden[positions])
        targets = x[0, positions + 1]
        return F.cross_entropy(logits.float(), targets, reduction="none").cpu()

    def reads(self, ids: list[int], found: list[list[Neighbour]] | None, *, k: int,
              to_tokens: Callable[[Neighbour], list[int]] | None = None) -> tuple[int, int]:
        """Tokens read to score ``ids`` as :meth:`token_losses` does: every chunk's whole window through the LM, no encoder."""
        m = self.config.chunk_tokens
        as_tokens = to_tokens or (lambda nb: nb.retrieved_tokens)
        total = 0
        for u in range((len(ids) - 1) // m + 1):
            readers = found[u - 1][:k] if found is not None and 0 < u <= len(found) else []
            total += len(self.window(ids, u, [as_tokens(nb) for nb in readers])[0])
        return total, 0

    def token_losses(
        self,
        ids: list[int],
        found: list[list[Neighbour]] | None,
        *,
        k: int,
        to_tokens: Callable[[Neighbour], list[int]] | None = None,
    ) -> torch.Tensor:
        """Nats of every predicted token of ``ids`` (all but the first), chunk ``u`` reading ``found[u - 1]`` as text.

        Args:
            ids: the text's tokens under this model's tokenizer (at least two).
            found: per complete chunk, its neighbours (the first k are prepended to the next chunk's window); None: nothing prepended.
            k: neighbours per chunk.
            to_tokens: a neighbour's tokens in this model's vocabulary (default its ``retrieved_tokens``).

        Returns:
            float tensor (len(ids) - 1,): entry j is the loss of predicting ``ids[j + 1]``, as
            :func:`model.network.scoring.token_losses` returns.
        """
        m = self.config.chunk_tokens
        as_tokens = to_tokens or (lambda nb: nb.retrieved_tokens)
        key = tuple(ids)
        if key != self._memo_key:
            self._memo_key, self._memo = key, {}
        out = []
        for u in range((len(ids) - 1) // m + 1):
            readers = found[u - 1][:k] if found is not None and 0 < u <= len(found) else []
            memo = (u, tuple(nb.chunk_id for nb in readers))
            if memo not in self._memo:
                window, first = self.window(ids, u, [as_tokens(nb) for nb in readers])
                self._memo[memo] = self._chunk_losses(window, first)
            out.append(self._memo[memo])
        losses = torch.cat(out)
        assert len(losses) == len(ids) - 1, (len(losses), len(ids))
        return losses
