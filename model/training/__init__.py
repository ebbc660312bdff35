"""Training RETRO on a store version: sequences, precomputed neighbours, the loop.

- ``data``: documents packed into chunk-aligned windows (``plan_sequences``), ``SequenceSet``.
- ``neighbours``: every chunk's k neighbours searched once through the store, cached on disk.
- ``corpus``: text/JSONL files read and indexed into a fresh store version.
- ``prepare``: store version → train/eval ``SequenceSet`` with neighbours.
- ``loop``: ``TrainConfig`` and ``train`` (AdamW, warmup + cosine, clipping, eval, resume).
"""
