"""``notochord-rt web``: a local web playground (page, WebSocket protocol, sessions).

Modules, one job each: :mod:`.protocol` (the versioned JSON messages and their checks),
:mod:`.engine` (per-tab samplers sharing one set of weights), :mod:`.batched` (or every
tab a stream of one batched engine), :mod:`.session` (one tab: a
real-time :class:`~notochord_rt.apps.live.player.Player` running the play app's
:class:`~notochord_rt.apps.play.policy.VoicesPolicy`), :mod:`.recorder` (the session as a
MIDI file), :mod:`.sessions` (bounded session count, idle expiry), :mod:`.limits` (rate
limits), :mod:`.soundfont` (finding the GM SoundFont), :mod:`.static` (the bundled page
files) and :mod:`.server` (the starlette app). The protocol is documented in docs/web.md.
"""
