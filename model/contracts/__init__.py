"""The contracts everything else shares: ids, chunking, tokenizer, embedder, compatibility, clock,
precision, the retrieval contract and the runtime settings.

The bottom layer of ``model``: it imports nothing else of it, and the store, the network, the
server, the Beam jobs and the flows all build on it. Importing this package loads nothing.
"""
