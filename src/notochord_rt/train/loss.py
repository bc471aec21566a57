"""The training objective and NLL book-keeping shared by training and evaluation.

The model returns per-position log-likelihoods (B, T-1) for each sub-event and for
the end flag. The loss, as in the reference (docs/design.md §4.6), is the sum over those five terms
of their mean over real (non-padding) positions, in nats.
"""

from __future__ import annotations

import math

import torch

TERMS: tuple[str, ...] = ("inst", "pitch", "time", "vel", "end")


def masked_nll(out: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean negative log-likelihood of each term over positions where ``mask`` is True.

    ``mask`` is (B, T-1) bool, aligned with the model's outputs (targets 1..T-1).
    Values at masked-out positions are ignored even if they are not finite.
    """
    count = mask.sum().clamp(min=1)
    zero = torch.zeros((), device=mask.device)
    return {k: -torch.where(mask, out[k].float(), zero).sum() / count for k in TERMS}


class NLLMeter:
    """Sums of log-likelihoods and counts over many batches; means per term on demand."""

    def __init__(self, terms: tuple[str, ...] = TERMS):
        self.terms = terms
        self.sums = {k: 0.0 for k in terms}
        self.count = 0

    def add(self, out: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        zero = torch.zeros((), device=mask.device)
        for k in self.terms:
            self.sums[k] += float(torch.where(mask, out[k].double(), zero.double()).sum())
        self.count += int(mask.sum())

    def as_tensor(self) -> torch.Tensor:
        """(sums..., count) as one float64 tensor, for an all-reduce across ranks."""
        return torch.tensor([*self.sums.values(), float(self.count)], dtype=torch.float64)

    def load_tensor(self, t: torch.Tensor) -> None:
        *sums, count = t.tolist()
        self.sums = dict(zip(self.terms, sums))
        self.count = int(round(count))

    def means(self) -> dict[str, float]:
        """NLL per term in nats per event, plus ``total`` (their sum); NaN if empty."""
        if self.count == 0:
            nll = {k: math.nan for k in self.terms}
        else:
            nll = {k: -s / self.count for k, s in self.sums.items()}
        nll["total"] = sum(nll[k] for k in self.terms)
        return nll
