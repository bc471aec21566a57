"""The constrained sampler: constraints, support, the sampling loop, streams."""
