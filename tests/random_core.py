"""An adversarial inference core shared by the sampler's property tests and the grid tests."""

from __future__ import annotations

import math

import numpy as np
import torch


class RandomCore:
    """An adversarial :class:`InferenceCore` for the guarantee tests: every head output is
    random and often extreme (peaked categoricals, very sharp or very flat mixture
    components, locations outside the support), so that the sampler's guarantees are
    exercised far from what a trained network produces. Deterministic given its seed."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.zero = torch.zeros(1, 1, 1)
        self.ctx = torch.zeros(1)

    def initial_state(self):
        return self.zero

    def feed(self, state, inst, pitch, time, vel):
        for name, v in (("time", time), ("vel", vel)):
            assert math.isfinite(v), f"non-finite {name} reached the network"
        return state.clone()

    def context(self, state):
        return self.ctx

    def embed(self, sub, value):
        assert math.isfinite(value), f"non-finite {sub} embedded"
        return self.ctx

    def head(self, sub, x):
        r = self.rng
        if sub in "ip":
            return torch.from_numpy(r.normal(0, r.choice([0.1, 3.0, 30.0]), 321 if sub == "i"
                                             else 129))
        k, hi, sharp = (32, 10.0, (1e-4, 2e3)) if sub == "t" else (16, 127.0, (1e-3, 128.0))
        logits = r.normal(0, r.choice([0.1, 5.0]), k)
        log_pi = logits - np.logaddexp.reduce(logits)
        loc = r.uniform(-0.1 * hi, 1.1 * hi, k)
        s = np.exp(r.uniform(np.log(sharp[0]), np.log(sharp[1]), k))
        return torch.from_numpy(np.stack((log_pi, loc, s)))

    def end_prob(self, state):
        return 0.5
