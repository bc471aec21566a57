"""``notochord-rt harmonize --live`` (or without an input file): the live harmonizer.

The policy is :class:`~notochord_rt.apps.harmony.HarmonyPolicy`, the same one that
harmonizes a file offline; this module only wires it to MIDI ports.
"""

from __future__ import annotations

from typing import Any

from ...errors import UserError
from ..harmony import HarmonyPolicy, Voice
from .args import require_modules
from .ports import ChannelMap
from .session import LiveSession, load_live_model, options_from_args, run_session, voice_channels


def harmonize_main(args: Any) -> int:
    """Run the live harmonizer: needs ``args.voices`` (:class:`Voice` objects or
    ``INST:LO:HI`` strings), ``args.pitch_temp``, ``args.seed``, ``args.checkpoint`` and
    the live flags of :mod:`.args`."""
    voices = [v if isinstance(v, Voice) else _parse_voice(v) for v in (args.voices or [])]
    if not voices:
        raise UserError("give at least one voice (--voice INST:LO:HI)")
    cmap_in = ChannelMap.parse(args.player, {0: 1})
    cmap_out = voice_channels([v.inst for v in voices], set(cmap_in.inst), args.out_channels)
    require_modules("harmonize --live", "rtmidi")
    opts = options_from_args(args, "harmonize")
    model = load_live_model(args)
    seed = getattr(args, "seed", None)
    if seed is not None:
        model.reset(seed=seed)
    policy = HarmonyPolicy(voices, pitch_temp=getattr(args, "pitch_temp", 1.0))
    session = LiveSession(model, policy, cmap_in, cmap_out, opts)
    if getattr(args, "clock", None) is None:
        return run_session(session, args, "harmonize")
    from .beat import run_with_clock

    return run_with_clock(session, args, "harmonize")  # answers stay immediate


def _parse_voice(spec: str) -> Voice:
    try:
        return Voice.parse(spec)
    except ValueError as e:
        raise UserError(str(e)) from None


__all__ = ["harmonize_main"]
