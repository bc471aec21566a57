"""Sessions of the OSC server, served by one batched many-stream engine.

Each session is one stream of :class:`~notochord_rt.engine.sampling.streams.Streams`: its own
recurrent state, held notes, step count and random generator, plus an optional prompted
state that ``reset`` returns to. Session 0 always exists and is shared by every client
that does not name a session (the reference server's behaviour); further sessions are
opened by clients, named by an unguessable token (``secrets``), limited per host, and
expire after a period of inactivity (the owner is told, so it can release its notes).

:meth:`Sessions.run` serves a batch of checked requests (:class:`~.osc_protocol.Request`)
that arrived together. Each session's requests run in arrival order; requests of
different sessions are served in *rounds*, one request per session per round, and in
each round every feed is one batched network step, every sample one batched sampling
call, and every feed-after-sample one more batched step. A failure in a batched step is
retried request by request, so a bad request gets its own error reply and affects no
other. ``prompt`` and ``load`` read their file on a worker thread
(:mod:`.osc_files`); :meth:`Sessions.poll` delivers their replies, and feeds a prompt a
few events at a time between other requests.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...engine.sampling.sampler import SampledEvent, SamplerState
from ...engine.sampling.streams import Streams
from ...engine.sampling.support import compile_constraints
from ...errors import CheckpointError, InputError, MidiError, NoPossibleEvents
from ...events import CANONICAL_ORDER, SUB_EVENTS
from .files import FileJob, FileRoot, default_loader, read_prompt
from .protocol import MAX_MESSAGE, PREFIX, RETURN, SHARED, Request, RequestError

log = logging.getLogger(__name__)

ERROR_ADDRESS = f"{RETURN}{PREFIX}/error"
EXPIRED_ADDRESS = f"{RETURN}{PREFIX}/session/expired"
Reply = tuple[Request, str, dict[str, Any]]
#: errors that are the client's fault (anything else is logged as a server bug)
CLIENT_ERRORS = (InputError, NoPossibleEvents, MidiError, CheckpointError)
HELD_REPLY_MAX = 32  # notes listed in a held reply (the rest are counted as "more")


@dataclass
class Session:
    """One client session: a stream slot, a prompted state, its own end-flag generator."""

    id: int | str  # 0 or the token
    slot: int
    rng: np.random.Generator
    prompt: SamplerState | None = None
    last_used: float = field(default_factory=time.monotonic)
    owner: tuple[str, int] = ("", 0)  # who opened it (told when it expires)
    busy: str | None = None  # what it is waiting for (a prompt being read or fed)


def error_reply(req: Request, message: str) -> Reply:
    """The error reply of ``req`` (message cut to :data:`MAX_MESSAGE` characters)."""
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - 3] + "..."
    return req, ERROR_ADDRESS, {"address": req.address[:64], "message": message,
                                "handle": req.handle}


def failure(req: Request, e: BaseException) -> Reply:
    """The error reply for an exception: the message of a client error; for anything
    else (logged once a second at most), ``internal error: TYPE``."""
    if isinstance(e, CLIENT_ERRORS):
        return error_reply(req, str(e))
    _log_internal(e, req)
    return error_reply(req, f"internal error: {type(e).__name__}: {e}")


_last_internal = [0.0]


def _log_internal(e: BaseException, req: Request) -> None:
    now = time.monotonic()
    if now - _last_internal[0] >= 1.0:
        _last_internal[0] = now
        log.error("internal error serving %s: %s: %s", req.address[:64], type(e).__name__, e,
                  exc_info=e)


class Sessions:
    """The session table and the engine serving it.

    Args:
        model: the network (any ``NotochordNet``); its weights are packed by ``Streams``.
        max_sessions: sessions that may be open at once besides the shared session 0.
        precision: precision of the packed weights (see ``FastCore``).
        seed: seeds every session's generators (reproducible runs); None = fresh entropy.
        files: the folder ``prompt`` and ``load`` may read (None: they are refused).
        loader: builds a model from a path for ``load`` (default ``NotochordNet.load``).
        per_host: sessions one host may have open at once.
        prompt_budget: seconds of prompt feeding per :meth:`poll` (between requests).
    """

    def __init__(self, model, max_sessions: int = 64, precision: str = "fp32",
                 seed: int | None = None, files: FileRoot | None = None,
                 loader: Callable[[str], Any] | None = None, per_host: int = 16,
                 prompt_budget: float = 0.002) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or \
                max_sessions < 0:
            raise InputError(f"max_sessions must be an int >= 0, got {max_sessions!r}")
        self.max_sessions = max_sessions
        self.precision = precision
        self.files = files
        self.per_host = per_host
        self.prompt_budget = prompt_budget
        self._loader = loader
        self._seeds = np.random.default_rng(seed)
        self.base_prompt: SamplerState | None = None
        self.checkpoint = "(given model)"
        self._build(model)
        self._sessions: dict[int | str, Session] = {SHARED: self._new_session(SHARED, 0)}
        self._free = deque(range(1, max_sessions + 1))
        self._hosts: Counter[str] = Counter()
        self._job: tuple[FileJob, Request] | None = None
        self._stale: FileJob | None = None  # a finished or timed-out job's thread
        self._feeding: tuple[Request, Session, list, int, dict] | None = None
        self.clock: Any = None  # serve --clock: an apps.live.clock.Clock

    @property
    def allow_files(self) -> bool:
        """Whether ``prompt`` and ``load`` may read files."""
        return self.files is not None

    # -- table ---------------------------------------------------------------------------
    def _build(self, model) -> None:
        seeds = [self._fresh_seed() for _ in range(self.max_sessions + 1)]
        streams = Streams(model, self.max_sessions + 1, precision=self.precision, seed=seeds)
        self.model, self.streams = model, streams  # only once the engine is built

    def _fresh_seed(self) -> int:
        return int(self._seeds.integers(2**63))

    def _new_session(self, sid: int | str, slot: int, seed: int | None = None) -> Session:
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

    def get(self, sid: int | str) -> Session:
        """The open session ``sid`` (0 or a token); :class:`InputError` if there is none."""
        sess = self._sessions.get(sid)
        if sess is None:
            raise InputError("no such session (open one with "
                             f"{PREFIX}/session/open; idle sessions expire)")
        sess.last_used = time.monotonic()
        return sess

    def _ready(self, sid: int | str) -> Session:
        sess = self.get(sid)
        if sess.busy:
            raise InputError(f"session busy: {sess.busy}; wait for its reply")
        return sess

    @property
    def open_count(self) -> int:
        """Open sessions, the shared session 0 included."""
        return len(self._sessions)

    def expire(self, idle_seconds: float) -> list[Reply]:
        """Close sessions (not 0) unused for ``idle_seconds``; returns a notice for each
        owner (``/return/notochord/session/expired session TOKEN held N``: the notes
        it had sounding, which it should release)."""
        now = time.monotonic()
        old = [s for s in self._sessions.values()
               if s.id != SHARED and not s.busy and now - s.last_used > idle_seconds]
        notices = []
        for sess in old:
            held = len(self.streams.held_notes(sess.slot))
            self._close(sess.id)
            req = Request("session/expired", f"{PREFIX}/session/expired", sender=sess.owner)
            notices.append((req, EXPIRED_ADDRESS, {"session": sess.id, "held": held}))
            log.info("a session expired after %.0f s idle", idle_seconds)
        return notices

    def _close(self, sid: int | str) -> None:
        sess = self._sessions.pop(sid)
        self.streams.reset(sess.slot)  # releases its held notes
        self._free.append(sess.slot)
        self._hosts[sess.owner[0]] -= 1
        if self._hosts[sess.owner[0]] <= 0:
            del self._hosts[sess.owner[0]]

    # -- serving -------------------------------------------------------------------------
    def run(self, requests: list[Request]) -> list[Reply]:
        """Serve requests that arrived together; one reply (or error) per request that
        needs one (a ``feed`` without a ``handle`` gets none, as in the reference;
        ``prompt`` and ``load`` answer later, from :meth:`poll`). Never raises for a
        request: any failure is that request's error reply."""
        replies: list[Reply] = []
        queues: OrderedDict[Any, deque[Request]] = OrderedDict()
        for n, req in enumerate(requests):
            key = n if req.op in ("session/open", "status", "ping", "load") else req.session
            queues.setdefault(key, deque()).append(req)
        while queues:
            engine: list[tuple[Request, Session]] = []
            for key in list(queues):
                req = queues[key].popleft()
                if not queues[key]:
                    del queues[key]
                try:
                    if req.event is not None or req.draw is not None:
                        engine.append((req, self._ready(req.session)))
                    else:
                        reply = self._control(req)
                        if reply is not None:
                            replies.append(reply)
                except Exception as e:  # this request's error, nobody else's
                    replies.append(failure(req, e))
            if engine:
                self._engine(engine, replies)
        return replies

    # -- the batched part ----------------------------------------------------------------
    def _each(self, items: list, fn: Callable[[list], Any]) -> dict[int, Any]:
        """``fn(items)`` once for all; if it raises, once per item, so that only the items
        at fault fail. Returns ``{index: exception}`` of the items that failed."""
        try:
            fn(items)
            return {}
        except Exception as e:
            if len(items) == 1:
                return {0: e}
        failed: dict[int, Any] = {}
        for k, item in enumerate(items):
            try:
                fn([item])
            except Exception as e:
                failed[k] = e
        return failed

    def _feed_all(self, items: list[tuple[Session, tuple]]) -> None:
        if items:
            self.streams.feed([s.slot for s, _ in items], *zip(*(e for _, e in items)))

    def _engine(self, batch: list[tuple[Request, Session]], replies: list[Reply]) -> None:
        feeds = [(r, s) for r, s in batch if r.event is not None]
        failed = self._each([(s, r.event) for r, s in feeds], self._feed_all)
        bad = {id(feeds[k][0]): e for k, e in failed.items()}
        drawn = self._sample([(r, s) for r, s in batch
                              if r.draw is not None and id(r) not in bad])
        bad.update({k: e for k, e in drawn.items() if isinstance(e, BaseException)})
        after = [(r, s) for r, s in batch if r.draw is not None and r.draw.feed_after
                 and id(r) not in bad]
        steps = {id(r): int(self.streams.step_count[s.slot]) for r, s in batch}
        events = [(s, (e.inst, e.pitch, e.time, e.vel)) for r, s in after
                  for e in [drawn[id(r)]]]
        failed = self._each(events, self._feed_all)
        bad.update({id(after[k][0]): e for k, e in failed.items()})
        for r, s in batch:
            if id(r) in bad:
                replies.append(failure(r, bad[id(r)]))
            elif r.draw is None:
                if r.handle is not None:
                    replies.append((r, r.reply_to, {"step": steps[id(r)], "handle": r.handle}))
            else:
                replies.append((r, r.reply_to, self._event_reply(r, s, drawn[id(r)],
                                                                 steps[id(r)])))

    def _sample(self, items: list[tuple[Request, Session]]) -> dict[int, Any]:
        """Sample for every request in one batched call; on an error, one by one so that
        only the request at fault gets it (as the value in the returned dict)."""
        if not items:
            return {}
        params = any(r.draw.return_params for r, _ in items)  # type: ignore[union-attr]
        try:
            events = self.streams.sample([self._on_beat(r.draw) for r, _ in items],  # type: ignore
                                         idx=[s.slot for _, s in items], return_params=params)
            return {id(r): e for (r, _), e in zip(items, events)}
        except Exception as e:
            if len(items) == 1:
                return {id(items[0][0]): e}
        out: dict[int, Any] = {}
        for item in items:
            out.update(self._sample([item]))
        return out

    def _on_beat(self, draw: Any) -> Any:
        """A draw's compiled constraints, with the clock's tempo and beat now when it asks
        for the beat (``serve --clock``)."""
        if not draw.clocked:
            return draw.compiled
        info = None if self.clock is None else self.clock.info()
        if info is None or info.bpm is None or not info.playing:
            raise InputError("the server's clock has no tempo now (stopped or waiting "
                             "for MIDI clock)")
        return compile_constraints(dataclasses.replace(
            draw.compiled.cons, bpm=info.bpm, beat=info.beat,
            beats_per_bar=self.clock.per_bar))

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
            for m, name in zip(CANONICAL_ORDER, SUB_EVENTS):
                out[f"{name}_params"] = params.get(m)
        out["handle"] = r.handle
        return out

    # -- control ops ---------------------------------------------------------------------
    def _control(self, req: Request) -> Reply | None:
        op = req.op
        if op == "session/open":
            return self._open(req)
        if op == "load":
            return self._start_job(req, None)
        sess = self._ready(req.session)
        if op == "session/close":
            if sess.id == SHARED:
                raise InputError("session 0 is shared and cannot be closed")
            self._close(sess.id)
            return req, req.reply_to, {"session": sess.id, "handle": req.handle}
        if op == "reset":
            return self._reset(req, sess)
        if op == "prompt":
            return self._start_job(req, sess)
        if op == "held":
            notes = [[i, p, round(a, 6)] for (i, p), a in
                     sorted(self.streams.held_notes(sess.slot).items())]
            more = len(notes) - HELD_REPLY_MAX
            return req, req.reply_to, {"session": sess.id, "notes": notes[:HELD_REPLY_MAX],
                                       "more": more if more > 0 else None,
                                       "handle": req.handle}
        raise RequestError(f"{req.address} is not served here", req.address, req.handle)

    def _open(self, req: Request) -> Reply:
        host = req.sender[0]
        if not self._free:
            raise InputError(f"too many sessions (at most {self.max_sessions} besides "
                             f"session 0); close one with {PREFIX}/session/close")
        if self._hosts[host] >= self.per_host:
            raise InputError(f"too many sessions from this host (at most {self.per_host}); "
                             f"close one with {PREFIX}/session/close")
        token = "s" + secrets.token_urlsafe(12)
        sess = self._new_session(token, self._free.popleft(), req.args.get("seed"))
        sess.owner = req.sender
        self._sessions[token] = sess
        self._hosts[host] += 1
        return req, req.reply_to, {"session": token, "handle": req.handle}

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

    # -- files: prompt and load, off the serving thread ------------------------------------
    def _start_job(self, req: Request, sess: Session | None) -> None:
        files = self.files
        if files is None:
            raise InputError(f"{req.address}: this server reads no files (start it with "
                             "--allow-files DIR)")
        if self._job is not None or self._feeding is not None or (
                self._stale is not None and self._stale.running):
            raise InputError("busy: another prompt or load is in progress; try again")
        path, merge = req.args["path"], req.args.get("merge", False)
        if sess is None:
            loader = self._loader or default_loader
            real = files.resolve(path, files.checkpoint_max_bytes)  # quick checks now

            def work() -> Any:
                files.resolve(real, files.checkpoint_max_bytes)
                return loader(real)
        else:
            files.resolve(path, files.midi_max_bytes)
            deadline = time.monotonic() + files.timeout

            def work() -> Any:
                return read_prompt(files.read(path, files.midi_max_bytes, deadline), merge)
            sess.busy = "reading a prompt"
        self._job = (FileJob(work, files.timeout, req.address), req)
        return None

    @property
    def working(self) -> bool:
        """Whether a prompt or load is in progress (:meth:`poll` has work to do)."""
        return self._job is not None or self._feeding is not None

    @property
    def feeding(self) -> bool:
        """Whether a prompt is being fed (:meth:`poll` needs the CPU, not just a look)."""
        return self._feeding is not None

    def poll(self) -> list[Reply]:
        """Advance a prompt or load: deliver a finished read, feed a prompt for at most
        ``prompt_budget`` seconds; returns the replies of what finished."""
        out: list[Reply] = []
        if self._job is not None:
            job, req = self._job
            result = job.poll()
            if result is not None:
                self._job, self._stale = None, job
                try:
                    self._finish_job(req, result, out)
                except Exception as e:
                    self._unbusy(req)
                    out.append(failure(req, e))
        if self._feeding is not None:
            req, sess, events, pos, info = self._feeding
            try:
                t_end = time.perf_counter() + self.prompt_budget
                while pos < len(events) and time.perf_counter() < t_end:
                    self.streams.feed([sess.slot], *events[pos])
                    pos += 1
            except Exception as e:
                self._feeding = None
                self._unbusy(req)
                out.append(failure(req, e))
                return out
            if pos < len(events):
                self._feeding = (req, sess, events, pos, info)
            else:
                self._feeding = None
                sess.busy = None
                sess.prompt = self.streams.get_state(sess.slot)
                out.append((req, req.reply_to, {
                    **info, "session": sess.id,
                    "step": int(self.streams.step_count[sess.slot]), "handle": req.handle}))
        return out

    def _unbusy(self, req: Request) -> None:
        sess = self._sessions.get(req.session)
        if sess is not None and req.op == "prompt":
            sess.busy = None

    def _finish_job(self, req: Request, result: tuple[str, Any], out: list[Reply]) -> None:
        kind, value = result
        if kind == "error":
            raise value
        if req.op == "load":
            self._swap(value, req.args["path"])
            out.append((req, req.reply_to, {"checkpoint": req.args["path"][:256],
                                            "sessions": self.open_count,
                                            "handle": req.handle}))
            return
        sess = self._sessions.get(req.session)
        if sess is None:  # closed meanwhile
            return
        events, info = value
        self.streams.reset(sess.slot)
        self._feeding = (req, sess, events, 0, info)

    def prompt(self, sid: int | str, path: str, merge: bool = False) -> dict[str, Any]:
        """Feed a MIDI file (read here, at once: for the operator's ``--prompt``) to
        session ``sid`` from a fresh start; the state after it becomes the session's
        reset state. Returns a summary."""
        with open(path, "rb") as f:
            events, info = read_prompt(f.read(), merge)
        sess = self.get(sid)
        self.streams.reset(sess.slot)
        for e in events:
            self.streams.feed([sess.slot], *e)
        sess.prompt = self.streams.get_state(sess.slot)
        return {**info, "session": sess.id, "step": int(self.streams.step_count[sess.slot])}

    def load(self, path: str) -> None:
        """Swap the model at once (read here: for embedding and tests)."""
        self._swap((self._loader or default_loader)(path), path)

    def _swap(self, model, path: str) -> None:
        """Serve ``model``; every session restarts (prompted states are dropped)."""
        try:
            self._build(model)
        except CLIENT_ERRORS:
            raise
        except Exception as e:  # a network the engine cannot serve: keep the old model
            raise CheckpointError(f"cannot serve this model: {type(e).__name__}: "
                                  f"{e}") from e
        self.base_prompt = None
        self.checkpoint = path
        for sess in self._sessions.values():
            sess.prompt = None
            sess.busy = None
        log.info("loaded %s; %d sessions restarted", path, len(self._sessions))
