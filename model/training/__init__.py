"""Training RETRO on a store version: sequences, precomputed neighbours, the loop."""
