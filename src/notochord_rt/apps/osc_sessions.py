"""Sessions of the OSC server, served by one batched many-stream engine.

Each session is one stream of :class:`~notochord_rt.engine.streams.Streams`: its own
recurrent state, held notes, step count and random generator, plus an optional prompted
state that ``reset`` returns to. Session 0 always exists and is shared by every client
that does not name a session (the reference server's behaviour); further sessions are
opened and closed by clients and expire after a period of inactivity.

:meth:`Sessions.run` serves a batch of checked requests (:class:`~.osc_protocol.Request`)
that arrived together. Each session's requests run in arrival order; requests of
different sessions are served in *rounds*, one request per session per round, and in
each round every feed is one batched network step, every sample one batched sampling
call, and every feed-after-sample one more batched step. A ``load`` request is a
barrier: everything before it is served first.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.sampler import SampledEvent, SamplerState
from ..engine.streams import Streams
from ..errors import CheckpointError, InputError, MidiError, NoPossibleEvents
from .osc_protocol import PREFIX, RETURN, Request, RequestError

log = logging.getLogger(__name__)

ERROR_ADDRESS = f"{RETURN}{PREFIX}/error"
Reply = tuple[Request, str, dict[str, Any]]
#: errors that are the client's fault (anything else is logged as a server bug)
CLIENT_ERRORS = (InputError, NoPossibleEvents, MidiError, CheckpointError)


@dataclass
class Session:
    """One client session: a stream slot, a prompted state, its own end-flag generator."""

    id: int
    slot: int
    rng: np.random.Generator
    prompt: SamplerState | None = None
    last_used: float = field(default_factory=time.monotonic)


def error_reply(req: Request, message: str) -> Reply:
    return req, ERROR_ADDRESS, {"address": req.address, "message": message,
                                "handle": req.handle}


class Sessions:
    """The session table and the engine serving it.

    Args:
        model: the network (any ``NotochordNet``); its weights are packed by ``Streams``.
        max_sessions: sessions that may be open at once besides the shared session 0.
        precision: precision of the packed weights (see ``FastCore``).
        seed: seeds every session's generators (reproducible runs); None = fresh entropy.
        allow_files: whether ``prompt`` and ``load`` may read files.
        loader: builds a model from a path for ``load`` (default ``NotochordNet.load``).
    """

    def __init__(self, model, max_sessions: int = 64, precision: str = "fp32",
                 seed: int | None = None, allow_files: bool = True,
                 loader: Callable[[str], Any] | None = None) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or \
                max_sessions < 0:
            raise InputError(f"max_sessions must be an int >= 0, got {max_sessions!r}")
        self.max_sessions = max_sessions
        self.precision = precision
        self.allow_files = allow_files
        self._loader = loader
        self._seeds = np.random.default_rng(seed)
        self.base_prompt: SamplerState | None = None
        self.checkpoint = "(given model)"
        self._build(model)
        self._sessions: dict[int, Session] = {0: self._new_session(0, 0)}
        self._free = deque(range(1, max_sessions + 1))
        self._next_id = 1

    # -- table ---------------------------------------------------------------------------
    def _build(self, model) -> None:
        seeds = [self._fresh_seed() for _ in range(self.max_sessions + 1)]
        streams = Streams(model, self.max_sessions + 1, precision=self.precision, seed=seeds)
        self.model, self.streams = model, streams  # only once the engine is built

    def _fresh_seed(self) -> int:
        return int(self._seeds.integers(2**63))

    def _new_session(self, sid: int, slot: int, seed: int | None = None) -> Session:
        seed = self._fresh_seed() if seed is None else seed
        ss = np.random.SeedSequence(seed).spawn(2)
        sess = Session(sid, slot, np.random.default_rng(ss[0]))
        self.streams.reset(slot, seed=int(ss[1].generate_state(1)[0]))
        if self.base_prompt is not None:
            self._restore(slot, self.base_prompt)
        return sess

    def _restore(self, slot: int, state: SamplerState) -> None:
        """Go back to a prompted state, keeping the stream's generator running."""
        rng = self.streams.get_state(slot).rng
        self.streams.set_state(slot, dataclasses.replace(state, rng=rng))

    def get(self, sid: int) -> Session:
        sess = self._sessions.get(sid)
        if sess is None:
            raise InputError(f"no session {sid} (open one with {PREFIX}/session/open; "
                             "idle sessions expire)")
        sess.last_used = time.monotonic()
        return sess

    @property
    def open_count(self) -> int:
        """Open sessions, the shared session 0 included."""
        return len(self._sessions)

    def expire(self, idle_seconds: float) -> list[int]:
        """Close sessions (not 0) unused for ``idle_seconds``; returns their ids."""
        now = time.monotonic()
        old = [s.id for s in self._sessions.values()
               if s.id and now - s.last_used > idle_seconds]
        for sid in old:
            self._close(sid)
            log.info("session %d expired after %.0f s idle", sid, idle_seconds)
        return old

    def _close(self, sid: int) -> None:
        sess = self._sessions.pop(sid)
        self.streams.reset(sess.slot)
        self._free.append(sess.slot)

    # -- serving -------------------------------------------------------------------------
    def run(self, requests: list[Request]) -> list[Reply]:
        """Serve requests that arrived together; one reply (or error) per request that
        needs one (a ``feed`` without a ``handle`` gets none, as in the reference)."""
        replies: list[Reply] = []
        segment: list[Request] = []
        for req in requests:
            if req.op == "load":
                self._rounds(segment, replies)
                segment = []
                self._guarded([req], replies, self._load)
            else:
                segment.append(req)
        self._rounds(segment, replies)
        return replies

    def _rounds(self, requests: list[Request], replies: list[Reply]) -> None:
        queues: OrderedDict[Any, deque[Request]] = OrderedDict()
        for n, req in enumerate(requests):
            key = n if req.op in ("session/open", "status", "ping") else req.session
            queues.setdefault(key, deque()).append(req)
        while queues:
            engine: list[tuple[Request, Session]] = []
            for key in list(queues):
                req = queues[key].popleft()
                if not queues[key]:
                    del queues[key]
                if req.event is not None or req.draw is not None:
                    try:
                        engine.append((req, self.get(req.session)))
                    except InputError as e:
                        replies.append(error_reply(req, str(e)))
                else:
                    self._guarded([req], replies, self._control)
            if engine:
                self._engine(engine, replies)

    @staticmethod
    def _guarded(reqs: list[Request], replies: list[Reply], fn) -> None:
        for req in reqs:
            try:
                replies.append(fn(req))
            except CLIENT_ERRORS as e:
                replies.append(error_reply(req, str(e)))

    # -- the batched part ----------------------------------------------------------------
    def _feed(self, items: list[tuple[Session, tuple]]) -> None:
        if not items:
            return
        slots = [s.slot for s, _ in items]
        self.streams.feed(slots, *zip(*(e for _, e in items)))

    def _engine(self, batch: list[tuple[Request, Session]], replies: list[Reply]) -> None:
        self._feed([(s, r.event) for r, s in batch if r.event is not None])
        drawn = self._sample([(r, s) for r, s in batch if r.draw is not None])
        after = [(s, drawn[id(r)]) for r, s in batch
                 if r.draw is not None and r.draw.feed_after
                 and isinstance(drawn[id(r)], SampledEvent)]
        steps = {id(r): int(self.streams.step_count[s.slot]) for r, s in batch}
        self._feed([(s, (e.inst, e.pitch, e.time, e.vel)) for s, e in after])
        for r, s in batch:
            if r.draw is None:
                if r.handle is not None:
                    replies.append((r, r.reply_to, {"step": steps[id(r)], "handle": r.handle}))
                continue
            e = drawn[id(r)]
            if isinstance(e, Exception):
                replies.append(error_reply(r, str(e)))
            else:
                replies.append((r, r.reply_to, self._event_reply(r, s, e, steps[id(r)])))

    def _sample(self, items: list[tuple[Request, Session]]) -> dict[int, Any]:
        """Sample for every request in one batched call; on an error, one by one so that
        only the request at fault gets it."""
        if not items:
            return {}
        params = any(r.draw.return_params for r, _ in items)  # type: ignore[union-attr]
        try:
            events = self.streams.sample([r.draw.compiled for r, _ in items],  # type: ignore
                                         idx=[s.slot for _, s in items], return_params=params)
            return {id(r): e for (r, _), e in zip(items, events)}
        except CLIENT_ERRORS:
            if len(items) == 1:
                r, s = items[0]
                try:
                    return {id(r): self.streams.sample(r.draw.compiled, idx=[s.slot],  # type: ignore
                                                       return_params=params)[0]}
                except CLIENT_ERRORS as e:
                    return {id(r): e}
            out: dict[int, Any] = {}
            for item in items:
                out.update(self._sample([item]))
            return out

    @staticmethod
    def _event_reply(r: Request, s: Session, e: SampledEvent, step: int) -> dict[str, Any]:
        d = r.draw
        assert d is not None
        out: dict[str, Any] = {"inst": e.inst, "pitch": e.pitch, "time": e.time, "vel": e.vel}
        if d.kind == "query":
            out["end"] = int(s.rng.random() < e.end) if d.allow_end else 0
            out["step"] = step
        else:
            out["end"] = e.end
            out["step"] = step
            out["broken"] = list(e.broken) or None
            out["forced"] = e.forced
        if d.return_params:
            params = e.params or {}
            for m, name in zip("iptv", ("inst", "pitch", "time", "vel")):
                out[f"{name}_params"] = params.get(m)
        out["handle"] = r.handle
        return out

    # -- control ops ---------------------------------------------------------------------
    def _control(self, req: Request) -> Reply:
        op = req.op
        if op == "session/open":
            if not self._free:
                raise InputError(f"too many sessions (at most {self.max_sessions} besides "
                                 f"session 0); close one with {PREFIX}/session/close")
            sid, self._next_id = self._next_id, self._next_id + 1
            self._sessions[sid] = self._new_session(sid, self._free.popleft(),
                                                    req.args.get("seed"))
            return req, req.reply_to, {"session": sid, "handle": req.handle}
        sess = self.get(req.session)
        if op == "session/close":
            if sess.id == 0:
                raise InputError("session 0 is shared and cannot be closed")
            self._close(sess.id)
            return req, req.reply_to, {"session": sess.id, "handle": req.handle}
        if op == "reset":
            return self._reset(req, sess)
        if op == "prompt":
            return self._prompt(req, sess)
        if op == "held":
            notes = [[i, p, round(a, 6)] for (i, p), a in
                     sorted(self.streams.held_notes(sess.slot).items())]
            return req, req.reply_to, {"session": sess.id, "notes": notes, "handle": req.handle}
        raise RequestError(f"{req.address} is not served here", req.address, req.handle)

    def _reset(self, req: Request, sess: Session) -> Reply:
        seed = req.args.get("seed")
        if seed is not None:
            ss = np.random.SeedSequence(seed).spawn(2)
            sess.rng = np.random.default_rng(ss[0])
            seed = int(ss[1].generate_state(1)[0])
        self.streams.reset(sess.slot, start=req.args.get("start", True), seed=seed)
        prompt = sess.prompt or self.base_prompt
        if prompt is not None:
            self._restore(sess.slot, prompt)
        return req, req.reply_to, {"session": sess.id,
                                   "step": int(self.streams.step_count[sess.slot]),
                                   "handle": req.handle}

    def _check_files(self, req: Request) -> None:
        if not self.allow_files:
            raise InputError(f"{req.address}: file access is disabled on this server "
                             "(started with --no-files)")

    def _prompt(self, req: Request, sess: Session) -> Reply:
        self._check_files(req)
        info = self.prompt(sess.id, req.args["path"], merge=req.args.get("merge", False))
        return req, req.reply_to, {**info, "handle": req.handle}

    def prompt(self, sid: int, path: str, merge: bool = False) -> dict[str, Any]:
        """Feed a MIDI file to session ``sid`` from a fresh start; the state after it
        becomes the session's reset state. Returns a summary for the reply."""
        from ..midi.ingest import load_midi

        sess = self.get(sid)
        ing = load_midi(path, merge=merge)
        slot = sess.slot
        self.streams.reset(slot)
        for e in ing.events.to_events():
            self.streams.feed([slot], [e.inst], [e.pitch], [e.time], [e.vel])
        sess.prompt = self.streams.get_state(slot)
        insts: dict[int, dict[str, Any]] = {}
        for part in ing.parts:
            d = insts.setdefault(part.inst, {"channels": [], "notes": 0})
            d["notes"] += part.notes
            if part.channel + 1 not in d["channels"]:
                d["channels"].append(part.channel + 1)
        log.info("session %d prompted with %s (%d events)", sid, path, len(ing.events))
        return {"session": sess.id, "events": len(ing.events),
                "duration": float(ing.events.duration), "instruments": insts,
                "step": int(self.streams.step_count[slot])}

    def _load(self, req: Request) -> Reply:
        self._check_files(req)
        path = req.args["path"]
        self.load(path)
        return req, req.reply_to, {"checkpoint": path, "sessions": self.open_count,
                                   "handle": req.handle}

    def load(self, path: str) -> None:
        """Swap the model; every session restarts (prompted states are dropped)."""
        if self._loader is None:
            from ..model.network import NotochordNet

            model = NotochordNet.load(path)
        else:
            model = self._loader(path)
        try:
            self._build(model)
        except CLIENT_ERRORS:
            raise
        except Exception as e:  # a network the engine cannot serve: keep the old model
            raise CheckpointError(f"{path}: cannot serve this model: {type(e).__name__}: "
                                  f"{e}") from e
        self.base_prompt = None
        self.checkpoint = path
        for sess in self._sessions.values():
            sess.prompt = None
        log.info("loaded %s; %d sessions restarted", path, len(self._sessions))
