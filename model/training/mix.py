"""Training-time neighbour mix: own passages at shifted offsets, and neighbour dropout.

A small RETRO model trained from scratch on retrieved neighbours alone barely learns to read them
(docs/ARCHITECTURE.md, "Teaching a small model to copy"): the neighbours of a real corpus rarely
hold the next chunk's words, so predicting from the weights is nearly as good and much easier to
learn. The mix makes reading pay on every batch:

- **own passages**: with probability ``own_passage_rate`` a chunk gets, in one random neighbour
  slot, a window of its own document that starts a random ``min_lead``…m tokens before the next
  chunk and so contains that chunk's text. Its position in the window varies, so the network must
  find the text by content (the mechanism that later copies a fact from a profile page), not by a
  fixed offset.
- **neighbour dropout**: with probability ``dropout`` a chunk sees no neighbours at all, so the
  model stays a language model when retrieval is off or finds nothing.

Only the training batches are mixed; evaluation, scoring and serving use retrieved neighbours as
they are, with same-document neighbours excluded as ever.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NeighbourMix:
    """How training batches rewrite their neighbours (all rates 0: unchanged)."""

    own_passage_rate: float = 0.0
    dropout: float = 0.0
    min_lead: int = 8  # tokens of the current chunk the own passage starts with, at least
    pad_id: int = 0

    def __post_init__(self):
        for name in ("own_passage_rate", "dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_lead < 1:
            raise ValueError(f"min_lead must be >= 1, got {self.min_lead}")

    @property
    def active(self) -> bool:
        return self.own_passage_rate > 0 or self.dropout > 0

    def apply(self, data, index: torch.Tensor, neighbours: torch.Tensor, mask: torch.Tensor, *,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewrite the neighbours of rows ``index`` of ``data`` (a SequenceSet); returns new tensors.

        Args:
            data: the training windows (their packed stream and ``doc_end``).
            index: (B,) rows the batch holds.
            neighbours: (B, L, k, r) long, the rows' retrieved neighbours.
            mask: (B, L, k, r) bool.
            generator: the batch's random source.

        Returns:
            ``(neighbours, mask)`` with own passages written in and dropped chunks masked out.
        """
        if not self.active:
            return neighbours, mask
        neighbours, mask = neighbours.clone(), mask.clone()
        B, L, k, r = neighbours.shape
        T = data.inputs.shape[1]
        m = T // L
        if self.own_passage_rate > 0:
            if data.doc_end is None:
                raise ValueError("own passages need the windows' document bounds (SequenceSet.from_plan)")
            stream = data.inputs.reshape(-1)
            starts = index[:, None] * T + torch.arange(L) * m  # (B, L) stream offset of each chunk
            doc_end = data.doc_end[index]  # (B, L)
            lead = torch.randint(self.min_lead, m + 1, (B, L), generator=generator)
            window = (starts + m - lead)[..., None] + torch.arange(r)  # (B, L, r) offsets of the passage
            valid = window < doc_end[..., None]  # never past the document's own end
            tokens = stream[window.clamp(max=stream.numel() - 1)]
            chosen = (torch.rand(B, L, generator=generator) < self.own_passage_rate) & (doc_end > starts + m)
            slot = torch.randint(0, k, (B, L), generator=generator)
            b, l = chosen.nonzero(as_tuple=True)
            s = slot[b, l]
            neighbours[b, l, s] = torch.where(valid[b, l], tokens[b, l], self.pad_id)
            mask[b, l, s] = valid[b, l]
        if self.dropout > 0:
            mask[torch.rand(B, L, generator=generator) < self.dropout] = False
        return neighbours, mask
