"""``notochord-rt finetune``: a model of your own MIDI in one command.

Stages (one progress callback across them; :func:`run_finetune`):

1. **prep** the user's files into ``DIR/prep`` (cached: a second run reads only new or
   changed files) and split them by content hash into ``DIR/data``
   (:mod:`.finetune_data`);
2. **before**: NLL per sub-event of the base model on the held-out ``test`` pieces;
3. **train** from the base weights with small-data defaults (:class:`FinetuneOptions`:
   a lower learning rate than training from scratch, a short warm-up, validation every
   ``eval_every`` steps on the user's ``valid`` pieces, early stopping after ``patience``
   validations without improvement, a time budget). The best weights so far are always in
   ``DIR/model.safetensors`` (written atomically at each improvement), so stopping at any
   moment, Ctrl-C included, keeps the best checkpoint;
4. **after**: the same NLL for the fine-tuned model;
5. **music**: where the analysis package can, statistics of pieces sampled from both
   models against the held-out pieces (per-feature overlap, ``notochord-rt stats``), and a
   sample of the result (``DIR/sample.mid``, ``.png``; ``DIR/sample-before.*`` from the
   base model with the same seed).

Everything is written to ``DIR/finetune.json``; nothing here prints.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...atomic import atomic_write_text
from ...errors import UserError

log = logging.getLogger(__name__)

STAGES = {"prep": 0.04, "before": 0.04, "train": 0.80, "after": 0.04, "music": 0.08}
"""Share of the progress bar each stage takes."""
Progress = Callable[[str, float], None]
"""``progress(stage, done)``: ``done`` in [0, 1] over all stages."""
STATS_FEATURES = ("notes_per_s", "polyphony", "pitch_mean", "pitch_range", "in_scale",
                  "grid_fit", "duration_median", "velocity_mean")


@dataclass
class FinetuneOptions:
    """Defaults suited to a few minutes of CPU on tens of minutes of MIDI."""

    minutes: float = 10.0
    """Training time budget (the other stages come on top: about a minute)."""
    max_steps: int | None = None
    lr: float = 1e-4
    """A third of the trainer's default: the base model is already good."""
    warmup_steps: int = 20
    batch_size: int = 16
    batch_len: int = 64
    eval_every: int = 100
    """Optimisation steps between validations (and checkpoints)."""
    patience: int = 6
    """Validations without improvement before stopping early."""
    freeze_rnn: bool = False
    seed: int = 0
    threads: int = 1
    jobs: int = 1
    sample_seconds: float = 30.0
    stats_samples: int = 4
    """Pieces sampled from each model for the music statistics (0: none)."""
    stats_seconds: float = 20.0


@dataclass
class FinetuneResult:
    """What :func:`run_finetune` measured and wrote."""

    out: str
    model: str
    base: str
    data: dict[str, Any] = field(default_factory=dict)
    nll_before: dict[str, float] = field(default_factory=dict)
    nll_after: dict[str, float] = field(default_factory=dict)
    valid_curve: list[tuple[int, float, float]] = field(default_factory=list)
    """(step, seconds, valid NLL) at each validation; step 0 is the base model."""
    steps: int = 0
    best_step: int = 0
    stopped: str = ""
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    music: dict[str, Any] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _TimeUp(Exception):
    pass


def _evaluate(model: Any, pieces: list) -> dict[str, float]:
    from ...train.evaluate import CANONICAL_ORDER, evaluate

    result = evaluate(model, pieces, orders=(CANONICAL_ORDER,))
    return {k: float(v) for k, v in result["nll"].items()}


def _trainer(base: str, data_dir: Path, run_dir: Path, opts: FinetuneOptions) -> Any:
    from ...train.config import TrainConfig
    from ...train.trainer import Trainer

    cfg = TrainConfig(data=str(data_dir), out=str(run_dir), init_from=base,
                      freeze_rnn=opts.freeze_rnn, batch_size=opts.batch_size,
                      batch_len=opts.batch_len, lr=opts.lr, warmup_steps=opts.warmup_steps,
                      epoch_size=opts.eval_every, valid_batches=None, valid_len=512,
                      keep_checkpoints=1, progress=False, device="cpu", precision="fp32",
                      threads=opts.threads, seed=opts.seed)
    return Trainer(cfg)


def _train(trainer: Any, best_path: Path, opts: FinetuneOptions, result: FinetuneResult,
           progress: Progress, base_of: float) -> None:
    """Validate-and-keep-the-best loop; stops on budget, max_steps, patience or Ctrl-C."""
    budget = opts.minutes * 60.0
    started = time.perf_counter()
    share = STAGES["train"]

    def spent() -> float:
        return time.perf_counter() - started

    def on_step(step: int, logs: dict, seconds: float) -> None:
        frac = spent() / budget if budget > 0 else 0.0
        if opts.max_steps:
            frac = max(frac, step / opts.max_steps)
        progress("train", base_of + share * min(frac, 1.0))
        if spent() >= budget:
            raise _TimeUp

    best = trainer.validate()["total"]
    result.valid_curve.append((0, 0.0, best))
    trainer.model.save(best_path, source="notochord-rt finetune (base weights, step 0)")
    bad_rounds = 0
    try:
        while True:
            target = trainer.step + opts.eval_every
            if opts.max_steps:
                target = min(target, opts.max_steps)
            try:
                trainer.fit(until_step=target, on_step=on_step)
                valid = trainer.last_valid["total"]
            except _TimeUp:
                valid = trainer.validate()["total"]
                result.stopped = "time budget"
            result.valid_curve.append((trainer.step, round(spent(), 1), valid))
            if valid < best:
                best, bad_rounds, result.best_step = valid, 0, trainer.step
                trainer.model.save(best_path, source=f"notochord-rt finetune, step "
                                   f"{trainer.step}, valid NLL {valid:.4f}")
            else:
                bad_rounds += 1
            if result.stopped:
                break
            if opts.max_steps and trainer.step >= opts.max_steps:
                result.stopped = "max steps"
                break
            if bad_rounds >= opts.patience:
                result.stopped = f"early stop ({opts.patience} validations without improvement)"
                break
            if spent() >= budget:
                result.stopped = "time budget"
                break
    except KeyboardInterrupt:
        result.stopped = "interrupted (Ctrl-C): the best checkpoint so far is kept"
    result.steps = trainer.step
    result.train_seconds = round(spent(), 1)


def _sample(model: Any, seconds: float, seed: int, instruments: list[int]) -> Any:
    from ...engine.sampling.sampler import Notochord
    from .generate import GenerateOptions, generate

    sampler = Notochord.from_net(model)
    sampler.use_core("fp32")
    opts = GenerateOptions(seconds=seconds, seed=seed, instruments=instruments or None)
    return generate(sampler, opts).events


def _music(before: Any, after: Any, data: Any, opts: FinetuneOptions) -> dict[str, Any]:
    """Statistics of sampled pieces of both models against the held-out pieces."""
    from ...analysis.compare import compare, mean_overlap
    from ...analysis.features import StatsConfig
    from ...analysis.sets import SetStats, Source, analyse
    from .finetune_data import held_out_pieces

    cfg = StatsConfig()
    held = held_out_pieces(data, "test") + held_out_pieces(data, "valid")
    ref = analyse("held-out", [Source(f"held-out#{k}", lambda p=p: p)
                               for k, p in enumerate(held)], cfg)
    insts = data.instruments[:4]
    out: dict[str, Any] = {"samples": opts.stats_samples, "seconds": opts.stats_seconds,
                           "instruments": insts}
    sets: dict[str, SetStats] = {"held-out": ref}
    for name, model in (("before", before), ("after", after)):
        pieces = [_sample(model, opts.stats_seconds, opts.seed + 100 + k, insts)
                  for k in range(opts.stats_samples)]
        sets[name] = analyse(name, [Source(f"{name}#{k}", lambda p=p: p)
                                    for k, p in enumerate(pieces)], cfg)
        if sets[name].pieces and ref.pieces:
            rows = compare(sets[name], ref, STATS_FEATURES)
            out[f"overlap_{name}"] = mean_overlap(rows)
    out["features"] = {f: {name: _mean(s, f) for name, s in sets.items()}
                       for f in STATS_FEATURES}
    return out


def _mean(s: Any, feature: str) -> float | None:
    v = s.values(feature)
    return float(v.mean()) if len(v) else None


def run_finetune(sources: list[str], base: str, out: str | Path,
                 opts: FinetuneOptions | None = None, progress: Progress | None = None,
                 restart: bool = False) -> FinetuneResult:
    """Fine-tune ``base`` (a checkpoint path or ``"default"``, already resolved from a
    name) on the MIDI files under ``sources``; everything goes into ``out``."""
    import shutil

    from ...model.network import NotochordNet
    from ...train.checkpoints import resolve_checkpoint
    from ...train.sources import load_model
    from .finetune_data import held_out_pieces, prepare_user_data

    opts = opts or FinetuneOptions()
    if opts.minutes <= 0 and not opts.max_steps:
        raise UserError("--minutes must be positive")
    for name in ("batch_size", "batch_len", "eval_every", "patience", "threads", "jobs"):
        if getattr(opts, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    progress = progress or (lambda stage, done: None)
    started = time.perf_counter()
    out = Path(out)
    run_dir, best_path = out / "run", out / "model.safetensors"
    if run_dir.exists():
        if not restart:
            raise UserError(f"{out} already holds a fine-tune ({best_path}); choose another "
                            "--out, or add --restart to train again (the prepared data is "
                            "reused)")
        shutil.rmtree(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_model = load_model(resolve_checkpoint(base)).eval()

    progress("prep", 0.0)
    data = prepare_user_data(sources, out, jobs=opts.jobs, progress=lambda d, n: progress(
        "prep", STAGES["prep"] * d / max(n, 1)))
    result = FinetuneResult(out=str(out), model=str(best_path), base=str(base),
                            data={"pieces": data.pieces, "events": data.events,
                                  "seconds": data.seconds, "files_seen": data.files_seen,
                                  "skipped": len(data.skipped)})
    test = held_out_pieces(data, "test")
    at = STAGES["prep"]
    progress("before", at)
    result.nll_before = _evaluate(base_model, test)
    at += STAGES["before"]
    progress("train", at)
    trainer = _trainer(base, data.folder, run_dir, opts)
    try:
        _train(trainer, best_path, opts, result, progress, at)
    finally:
        trainer.close()
    at += STAGES["train"]
    progress("after", at)
    tuned = NotochordNet.load(best_path)
    result.nll_after = _evaluate(tuned, test)
    at += STAGES["after"]
    progress("music", at)
    try:
        result.samples = _write_samples(base_model, tuned, out, opts, data.instruments[:4])
        if opts.stats_samples > 0:
            result.music = _music(base_model, tuned, data, opts)
    except KeyboardInterrupt:
        result.notes.append("music statistics and samples skipped (Ctrl-C)")
    if result.best_step == 0:
        result.notes.append("no validation improved on the base model: "
                            f"{best_path} holds the base weights")
    result.wall_seconds = round(time.perf_counter() - started, 1)
    from ...analysis.report import jsonable

    atomic_write_text(out / "finetune.json", json.dumps(jsonable(asdict(result)), indent=1) + "\n")
    progress("done", 1.0)
    return result


def _write_samples(before: Any, after: Any, out: Path, opts: FinetuneOptions,
                   instruments: list[int]) -> list[str]:
    from ...midi.export import save_midi
    from .render import RenderUnavailable, render_png

    written = []
    for tag, model in (("sample", after), ("sample-before", before)):
        events = _sample(model, opts.sample_seconds, opts.seed, instruments)
        save_midi(events, out / f"{tag}.mid")
        written.append(str(out / f"{tag}.mid"))
        try:
            render_png(events, out / f"{tag}.png",
                       title=f"{'fine-tuned' if tag == 'sample' else 'base'} model, seed "
                             f"{opts.seed}")
            written.append(str(out / f"{tag}.png"))
        except RenderUnavailable as e:
            log.warning("no piano roll: %s", e)
    return written


