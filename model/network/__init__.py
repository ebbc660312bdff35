"""The RETRO network: its config, RETRO and RETRO-fit, the chunk passes of their cross-attention,
decoding, generation, scoring and checkpoints.

Above ``model.contracts`` only: it never imports the store (importing it loads no FAISS) nor
anything above it. Importing this package loads nothing.
"""
