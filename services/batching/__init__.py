"""The dynamic batcher: per-model EDF queue, merge and split, adaptive cap, inference threads."""
