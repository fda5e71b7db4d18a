"""Flax NNX modules of proxylab: pure model code, no I/O, no training loop."""
