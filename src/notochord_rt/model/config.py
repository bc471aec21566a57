"""Hyper-parameters of the Notochord network, as one JSON-serialisable dataclass.

The defaults are the reference's current constructor defaults (17,744,100 parameters).
The config travels with every checkpoint (see :mod:`.checkpoint`), so a model can always
be rebuilt from its file alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import events as ev
from ..errors import short_repr

CONFIG_VERSION = 1

# Names of the reference constructor arguments (kw['model'] in its checkpoints) that map
# one-to-one onto fields of NotochordConfig.
_REFERENCE_SAME_NAME = (
    "emb_size",
    "rnn_hidden",
    "rnn_layers",
    "mlp_layers",
    "dropout",
    "norm",
    "num_pitches",
    "num_instruments",
    "time_sines",
    "vel_sines",
    "time_components",
    "time_res",
    "vel_components",
)


def _pair(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}")
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{name} must be a pair of numbers, got {_short(value)}") from e
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be finite with lo < hi, got {_short(value)}")
    return lo, hi


def _real(value: Any, name: str, lo: float, hi: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {_short(value)}") from None
    if not (math.isfinite(x) and lo <= x <= hi):
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {_short(value)}")
    return x


def _short(value: Any, limit: int = 80) -> str:
    return short_repr(value, limit)


# -- declared bounds ------------------------------------------------------------------------
# A config is checked against these before anything is built from it, so a checkpoint
# cannot ask for a network of terabytes or for bounds that break sampling later. They are
# far above any model trained so far (the reference's default is emb 512, GRU 1024 x 2).
INT_LIMITS: dict[str, tuple[int, int]] = {
    "emb_size": (1, 8192),
    "rnn_hidden": (1, 8192),
    "rnn_layers": (1, 16),
    "mlp_layers": (0, 16),
    "num_pitches": (1, 1024),
    "num_instruments": (1, 4096),
    "time_sines": (1, 4096),
    "vel_sines": (1, 4096),
    "time_components": (1, 1024),
    "time_pulse": (0, 64),
    "time_pulse_fit": (0, 32),
    "time_pulse_vote": (0, 1),
    "time_pulse_grid": (0, 1),
    "pitch_copy": (0, 64),
    "vel_components": (1, 1024),
}
"""Inclusive ``(min, max)`` of every integer hyper-parameter."""

PAIR_LIMITS: dict[str, tuple[float, float]] = {
    "time_bounds": (0.0, 3600.0),        # seconds between events: at most an hour
    "vel_bounds": (0.0, 1024.0),         # MIDI velocities are 0..127
    "time_wavelengths": (1e-6, 1e6),     # seconds
    "vel_wavelengths": (1e-3, 1e6),
    "time_sharp_bounds": (1e-9, 1e9),    # inverse logistic scales
    "vel_sharp_bounds": (1e-9, 1e9),
}
"""Inclusive range that both ends of every ``(lo, hi)`` pair must lie in."""

REAL_LIMITS: dict[str, tuple[float, float]] = {
    "time_sharp_init": (0.0, 1.0),
    "time_pulse_gain": (0.0, 100.0),
}
"""Inclusive range of every real-valued hyper-parameter (bounds and resolutions aside)."""

MAX_BINS = 10_000_000
"""Most bins ``(hi - lo) / res`` a time or velocity distribution may have."""


@dataclass(frozen=True)
class NotochordConfig:
    """Every hyper-parameter of :class:`~notochord_rt.model.network.NotochordNet`.

    Sizes: ``emb_size`` is the embedding width and the hidden width of every GLU-MLP;
    ``rnn_hidden``/``rnn_layers`` size the GRU; ``mlp_layers`` GLU layers in ``h_proj``
    and in each head. ``dropout`` is applied between GRU layers and before every GLU
    layer's linear map. ``norm`` is ``"layer"`` (LayerNorm after each GLU) or ``None``.

    Continuous sub-events: the time and velocity embeddings use ``*_sines`` sinusoids with
    wavelengths spread over ``*_wavelengths`` (log-spaced for time, linear for velocity).
    Their likelihoods are censored discretised logistic mixtures with ``*_components``
    components on ``*_bounds`` with bin width ``*_res`` and sharpness (inverse logistic
    scale) clamped to ``*_sharp_bounds``. ``time_sharp_init`` only matters for a new,
    untrained network: each time component starts with a logistic scale of that fraction
    of its initial location (0: the reference's flat start, see
    :class:`~notochord_rt.model.distributions.CensoredLogisticMixture`); a trained model's
    weights carry what was learned whatever it says. ``time_pulse`` > 0 adds
    ``3 * time_pulse`` *pulse components* to the time mixture, placed by the network on
    the grids of the last ``time_pulse`` inter-onset intervals
    (:mod:`~notochord_rt.model.pulse`; ``time_pulse_fit`` > 0 fits their grids to that
    many recent onsets, from the last onset or, with ``time_pulse_vote`` = 1, from the one
    most of them agree with; ``time_pulse_grid`` = 1 instead places them on the next
    ``3 * time_pulse`` lines of one grid tracked through the stream,
    :mod:`~notochord_rt.model.grid_track`; ``time_pulse_gain`` > 0 reads their sharpness
    exponentially, see
    :func:`~notochord_rt.model.pulse.pulse_sharpness`). ``pitch_copy`` > 0 gives the pitch
    head one gate per motif-candidate kind (:mod:`~notochord_rt.model.motif`): ``pitch_copy`` recent
    pitches and four induction candidates of the event's instrument.
    """

    emb_size: int = 512
    rnn_hidden: int = 1024
    rnn_layers: int = 2
    mlp_layers: int = 2
    dropout: float = 0.1
    norm: str | None = "layer"
    num_pitches: int = ev.NUM_PITCHES
    num_instruments: int = ev.NUM_INSTRUMENTS
    time_sines: int = 128
    vel_sines: int = 128
    time_wavelengths: tuple[float, float] = (1e-3, 30.0)
    vel_wavelengths: tuple[float, float] = (2.0, 512.0)
    time_bounds: tuple[float, float] = (ev.TIME_MIN, ev.TIME_MAX)
    time_components: int = 32
    time_res: float = ev.TIME_RES
    time_sharp_bounds: tuple[float, float] = (1e-4, 2e3)
    time_sharp_init: float = 0.03
    time_pulse: int = 0
    time_pulse_fit: int = 0
    time_pulse_vote: int = 0
    time_pulse_grid: int = 0
    time_pulse_gain: float = 0.0
    pitch_copy: int = 0
    vel_bounds: tuple[float, float] = (ev.VEL_MIN, ev.VEL_MAX)
    vel_components: int = 16
    vel_res: float = ev.VEL_RES
    vel_sharp_bounds: tuple[float, float] = (1e-3, 128.0)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Free-form notes (e.g. where a converted model came from); not used by the network."""

    def __post_init__(self) -> None:
        for name, (lo, hi) in INT_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {_short(value)}")
        try:
            dropout = float(self.dropout)
        except (TypeError, ValueError):
            raise ValueError(f"dropout must be a number, got {_short(self.dropout)}") from None
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {_short(self.dropout)}")
        if self.norm not in (None, "layer"):
            raise ValueError(f"norm must be 'layer' or None, got {_short(self.norm)}")
        for name, (lo, hi) in PAIR_LIMITS.items():
            pair = _pair(getattr(self, name), name)
            if not (lo <= pair[0] and pair[1] <= hi):
                raise ValueError(f"{name} must lie within [{lo:g}, {hi:g}], got "
                                 f"{_short(getattr(self, name))}")
            object.__setattr__(self, name, pair)
        for name, bounds in (("time_res", self.time_bounds), ("vel_res", self.vel_bounds)):
            try:
                value = float(getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, got "
                                 f"{_short(getattr(self, name))}") from None
            width = bounds[1] - bounds[0]
            if not (math.isfinite(value) and value > 0 and width / value <= MAX_BINS):
                raise ValueError(f"{name} must be a positive number giving at most {MAX_BINS:,} "
                                 f"bins over {bounds}, got {_short(getattr(self, name))}")
            object.__setattr__(self, name, value)
        for name, (lo, hi) in REAL_LIMITS.items():
            object.__setattr__(self, name, _real(getattr(self, name), name, lo, hi))
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a dict, got {_short(self.extra)}")
        object.__setattr__(self, "dropout", dropout)

    # -- derived sizes ---------------------------------------------------------------------
    @property
    def n_inst_classes(self) -> int:
        """Instrument vocabulary including the start token 0."""
        return self.num_instruments + 1

    @property
    def time_mixture_components(self) -> int:
        """Components of the time mixture: the free ones and the pulse components
        (:mod:`~notochord_rt.model.pulse`)."""
        return self.time_components + 3 * self.time_pulse

    @property
    def pitch_head_outputs(self) -> int:
        """Outputs of the pitch head: the pitch logits and the motif gates."""
        from .motif import n_candidates

        return self.n_pitch_classes + n_candidates(self.pitch_copy)

    @property
    def n_pitch_classes(self) -> int:
        """Pitch vocabulary including the start token ``num_pitches``."""
        return self.num_pitches + 1

    @property
    def start_pitch(self) -> int:
        return self.num_pitches

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, with ``config_version``."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["config_version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NotochordConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are an error (no silent drift)."""
        d = dict(d)
        version = d.pop("config_version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ValueError(f"unsupported config_version {version!r} (expected {CONFIG_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_reference(cls, hparams: Mapping[str, Any]) -> NotochordConfig:
        """Config equal to a reference ``Notochord(**hparams)`` (its ``kw['model']``).

        Missing keys take the reference's current defaults, which are ours. Only the GRU
        backbone is supported; unknown keys are an error.
        """
        hp = dict(hparams)
        kind = hp.pop("kind", "gru")
        if kind != "gru":
            raise ValueError(f"only GRU backbones are supported, the checkpoint has {kind!r}")
        kwargs: dict[str, Any] = {}
        for name in _REFERENCE_SAME_NAME:
            if name in hp:
                kwargs[name] = hp.pop(name)
        if "time_bounds" in hp:
            kwargs["time_bounds"] = tuple(hp.pop("time_bounds"))
        if hp:
            raise ValueError(f"unknown reference hyper-parameters: {', '.join(sorted(hp))}")
        if kwargs.get("norm") not in (None, "layer") and "norm" in kwargs:
            raise ValueError(f"unsupported norm {kwargs['norm']!r}")
        return cls(**kwargs)

    def to_reference(self) -> dict[str, Any]:
        """The reference constructor arguments that build the same network.

        Raises ``ValueError`` if this config uses a setting the reference cannot express.
        """
        fixed = NotochordConfig()
        for name in ("time_wavelengths", "vel_wavelengths", "time_sharp_bounds",
                     "vel_bounds", "vel_res", "vel_sharp_bounds", "time_pulse", "time_pulse_fit",
                     "time_pulse_vote", "time_pulse_grid", "time_pulse_gain", "pitch_copy"):
            if getattr(self, name) != getattr(fixed, name):
                raise ValueError(f"the reference cannot express {name}={getattr(self, name)}")
        d = {name: getattr(self, name) for name in _REFERENCE_SAME_NAME}
        d["time_bounds"] = tuple(self.time_bounds)
        d["kind"] = "gru"
        return d
