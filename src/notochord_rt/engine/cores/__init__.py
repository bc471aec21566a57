"""Inference cores: the network math behind the sampler, in several precisions."""
