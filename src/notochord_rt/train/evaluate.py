"""Evaluation: how well a model predicts whole pieces.

Every piece is scored from the start state (start event, learned initial GRU state)
to its last event, whose end flag is the truth "the piece ends here". Long pieces are
fed through the GRU in chunks whose final state starts the next chunk, so the result
equals one pass over the whole piece while memory stays bounded.

Figures (all per real event, natural log, unless said otherwise):

* ``nll``: per sub-event (``inst``, ``pitch``, ``time``, ``vel``, ``end``) and ``total``
  under the canonical order i → p → t → v, the order string ``"iptv"`` (each sub-event
  conditioned on those before it, as the reference's test does with its identity
  permutation);
* ``nll_all_orders``: the same averaged over all 24 orders, ``orders``: total per order;
* ``time_within_30ms``: mean probability the model gives to a delta time within ±30 ms
  of the true one (from the time mixture's CDF, censoring atoms included; canonical order);
* ``bits_per_second``: the canonical total in bits divided by the seconds of music.

Time and velocity terms are discretised (10 ms and 1-step bins), so all terms are
log-probabilities and add up.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..events import CANONICAL_ORDER, EventArrays
from ..model.network import NotochordNet, order_mask
from .loss import TERMS

log = logging.getLogger(__name__)

ALL_ORDERS: tuple[str, ...] = tuple("".join(p) for p in itertools.permutations(CANONICAL_ORDER))
WINDOW = 0.03  # seconds either side of the true delta time
SUB_EVENTS = TERMS[:4]


@dataclass
class Totals:
    """Running sums over pieces (nats), per order, plus counts."""

    orders: tuple[str, ...]
    ll: dict[str, dict[str, float]] = field(default_factory=dict)
    end_ll: float = 0.0
    time_within: float = 0.0
    events: int = 0
    seconds: float = 0.0
    pieces: int = 0

    def __post_init__(self) -> None:
        self.ll = {o: {k: 0.0 for k in SUB_EVENTS} for o in self.orders}

    def result(self) -> dict:
        """The JSON-ready figures (see the module docstring)."""
        n = max(self.events, 1)
        per_order = {}
        for order, sums in self.ll.items():
            nll = {k: -v / n for k, v in sums.items()}
            nll["end"] = -self.end_ll / n
            nll["total"] = sum(nll[k] for k in TERMS)
            per_order[order] = nll
        canonical = per_order.get(CANONICAL_ORDER) or next(iter(per_order.values()))
        mean = {k: float(np.mean([v[k] for v in per_order.values()])) for k in (*TERMS, "total")}
        total_bits = canonical["total"] * self.events / math.log(2)
        return {
            "nll": canonical,
            "nll_all_orders": mean,
            "orders": {o: v["total"] for o, v in per_order.items()},
            "time_within_30ms": self.time_within / n,
            "events": self.events,
            "pieces": self.pieces,
            "seconds": self.seconds,
            "bits_per_second": total_bits / self.seconds if self.seconds > 0 else math.nan,
        }


def _categorical_ll(raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(raw.float(), -1).gather(-1, target[..., None])[..., 0]


def _within(model: NotochordNet, params, t: torch.Tensor) -> torch.Tensor:
    """P(|time - t| <= 30 ms) under the censored time distribution."""
    lo, hi = model.config.time_bounds
    a = torch.where(t - WINDOW <= lo, torch.full_like(t, -math.inf), t - WINDOW)
    b = torch.where(t + WINDOW >= hi, torch.full_like(t, math.inf), t + WINDOW)
    return model.time_dist.mass(params, a, b)


class PieceScorer:
    """Scores pieces with one model under several orders (see the module docstring)."""

    def __init__(self, model: NotochordNet, orders: Iterable[str] = ALL_ORDERS,
                 chunk: int = 1024):
        self.model = model
        self.orders = tuple(orders)
        if CANONICAL_ORDER not in self.orders:
            self.orders = (CANONICAL_ORDER, *self.orders)
        self.chunk = int(chunk)
        if self.chunk < 2:
            raise ValueError("chunk must be at least 2 events")
        dev = model.device
        self.masks = {o: order_mask(o, dev) for o in self.orders}

    def _sequence(self, piece: EventArrays) -> dict[str, torch.Tensor]:
        dev = self.model.device
        start = self.model.start_event()
        n = len(piece)
        end = np.zeros(n + 1, dtype=np.int64)
        end[-1] = 1
        return {
            "inst": torch.as_tensor(np.concatenate([[start.inst], piece.inst]),
                                    dtype=torch.long, device=dev),
            "pitch": torch.as_tensor(np.concatenate([[start.pitch], piece.pitch]),
                                     dtype=torch.long, device=dev),
            "time": torch.as_tensor(np.concatenate([[start.time], piece.deltas()]),
                                    dtype=torch.float32, device=dev),
            "vel": torch.as_tensor(np.concatenate([[start.vel], piece.vel]),
                                   dtype=torch.float32, device=dev),
            "end": torch.as_tensor(end, device=dev),
        }

    @torch.no_grad()
    def add(self, piece: EventArrays, totals: Totals) -> None:
        """Score one piece (absolute times, sorted) into ``totals``."""
        if len(piece) == 0:
            return
        m = self.model
        m.eval()
        seq = self._sequence(piece)
        n_pos = len(piece) + 1
        h = m.initial_hidden(1)
        prev_top = None
        pulse_in = m.pulse_inputs(seq["inst"][None], seq["time"][None], seq["vel"][None])
        motif_in = m.motif_inputs(seq["inst"][None], seq["pitch"][None], seq["vel"][None])
        for s in range(0, n_pos, self.chunk):
            sl = slice(s, min(s + self.chunk, n_pos))
            part = {k: v[sl][None] for k, v in seq.items()}
            embs = m.embed(part["inst"], part["pitch"], part["time"], part["vel"])
            top, h = m.rnn(embs.sum(-2), h)
            if prev_top is None:  # first chunk: position 0 is the start event, no target
                before, targets, after = top[:, :-1], slice(1, None), top[:, 1:]
            else:
                before = torch.cat([prev_top, top[:, :-1]], 1)
                targets, after = slice(0, None), top
            prev_top = top[:, -1:]
            if before.shape[1] == 0:
                continue
            rows = slice(max(s - 1, 0), sl.stop - 1)  # pulse inputs of the targets
            self._score_chunk(before, after, embs[:, targets],
                              {k: v[:, targets] for k, v in part.items()}, totals,
                              _rows(pulse_in, rows), _rows(motif_in, rows))
        totals.events += len(piece)
        totals.seconds += float(piece.time[-1])
        totals.pieces += 1

    def _score_chunk(self, before: torch.Tensor, after: torch.Tensor, embs: torch.Tensor,
                     tgt: dict[str, torch.Tensor], totals: Totals,
                     pulse_in: tuple[torch.Tensor, torch.Tensor] | None = None,
                     motif_in: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        m = self.model
        time_t = tgt["time"].clamp(*m.config.time_bounds)
        end = m.end_log_probs(after).gather(-1, tgt["end"][..., None])[..., 0]
        totals.end_ll += float(end.double().sum())
        for order, mask in self.masks.items():
            ctx = m.head_inputs(before, embs, mask)
            raw = [head(ctx[..., k, :]) for k, head in enumerate(m.heads)]
            time_p = m.time_params(raw[2].float(), pulse_in)
            pitch = m.pitch_logits(raw[1], motif_in, mask[1, 0])
            ll = {
                "inst": _categorical_ll(raw[0], tgt["inst"]),
                "pitch": _categorical_ll(pitch, tgt["pitch"]),
                "time": m.time_dist.log_prob(time_p, tgt["time"]),
                "vel": m.vel_dist.log_prob(m.vel_dist.params(raw[3].float()), tgt["vel"]),
            }
            sums = totals.ll[order]
            for k, v in ll.items():
                sums[k] += float(v.double().sum())
            if order == CANONICAL_ORDER:
                totals.time_within += float(_within(m, time_p, time_t).double().sum())


def _rows(pair: tuple[torch.Tensor, torch.Tensor] | None, rows: slice
          ) -> tuple[torch.Tensor, torch.Tensor] | None:
    return None if pair is None else (pair[0][:, rows], pair[1][:, rows])


def evaluate(model: NotochordNet, pieces: Iterable[EventArrays], *,
             orders: Iterable[str] = ALL_ORDERS, chunk: int = 1024,
             progress: bool = False, total: int | None = None) -> dict:
    """Score every piece; returns the JSON-ready figures of the module docstring."""
    scorer = PieceScorer(model, orders, chunk)
    totals = Totals(scorer.orders)
    it: Iterable[EventArrays] = pieces
    if progress:
        from tqdm import tqdm

        it = tqdm(pieces, total=total, desc="eval", unit="piece")
    for piece in it:
        scorer.add(piece, totals)
    if totals.events == 0:
        log.warning("no events to evaluate")
    return totals.result()


def json_safe(value: object, where: str = "") -> tuple[object, list[str]]:
    """``value`` with every non-finite float replaced by ``None``, and where they were.

    ``json.dumps`` writes NaN and infinity as ``NaN`` / ``Infinity``, which is not JSON;
    a broken model must still give output that JSON readers accept (the CLI then exits
    with an error naming the figures). Paths are dotted keys such as ``nll.total``.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None, [where or "value"]
    if isinstance(value, dict):
        out, bad = {}, []
        for k, v in value.items():
            out[k], b = json_safe(v, f"{where}.{k}" if where else str(k))
            bad += b
        return out, bad
    if isinstance(value, (list, tuple)):
        items = [json_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return [v for v, _ in items], [b for _, bs in items for b in bs]
    return value, []


# -- where pieces come from -------------------------------------------------------------
def store_pieces(root: str | Path, split: str) -> tuple[int, Iterator[EventArrays]]:
    """(count, pieces) of a prepared split."""
    from ..data.store import EventStore

    store = EventStore(root, split)
    return len(store), (store[k] for k in range(len(store)))


def midi_pieces(folder: str | Path, skipped: list[tuple[str, str]] | None = None
                ) -> tuple[int, Iterator[EventArrays]]:
    """(count, pieces) of the MIDI files under ``folder`` (recursively).

    Files that cannot be read are logged, appended to ``skipped`` as (path, reason)
    and left out.
    """
    from ..errors import MidiError
    from ..midi.ingest import load_midi

    paths = sorted(p for p in Path(folder).rglob("*")
                   if p.is_file() and p.suffix.lower() in (".mid", ".midi", ".rmi"))

    def gen() -> Iterator[EventArrays]:
        for p in paths:
            try:
                events = load_midi(p).events
            except MidiError as e:
                log.warning("skipping %s: %s", p, e)
                if skipped is not None:
                    skipped.append((str(p), str(e)))
                continue
            if len(events):
                yield events

    return len(paths), gen()
