"""The training loop: AdamW, LR schedule, clipping, bf16 autocast, DDP, validation,
TensorBoard, atomic checkpoints and exact resume.

Use :class:`Trainer` from Python or ``notochord-rt train`` from the shell; under
``torchrun`` every process runs the same code and :mod:`.distributed` joins them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..atomic import atomic_write_text
from ..data.balance import WeightedStepIndexer, piece_weights
from ..errors import CheckpointError, NotochordError, UserError
from ..hub.resolve import resolve_checkpoint as resolve_name
from ..model.checkpoint import (
    load_training_state,
    restore_rng_state,
    save_training_state,
    training_state_path,
)
from ..model.pulse import n_components
from . import checkpoints as ck
from . import distributed as dd
from . import sources
from .batches import StepIndexer, seed_all, step_seed
from .config import TrainConfig
from .evaluate import CANONICAL_ORDER
from .loss import TERMS, NLLMeter, masked_nll
from .schedule import lr_factor

log = logging.getLogger(__name__)

BATCH_KEYS = ("inst", "pitch", "time", "vel", "end", "mask")
MOTIF_KEYS = ("motif_cand", "motif_valid")  # with motif copying: computed by the loader
PULSE_KEYS = ("pulse_loc", "pulse_valid")  # with time_pulse_grid: computed by the loader


class TrainingDiverged(NotochordError):
    """The loss or the gradient became NaN or infinite; training stopped without saving."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None means plain fp32)."""
    if precision == "fp32":
        return None
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if cuda_bf16 else None
    if device.type == "cuda" and not cuda_bf16:
        raise UserError("precision bf16 asked for, but this GPU does not support bfloat16")
    return torch.bfloat16


def _grid_lines(config) -> int:
    """Grid lines the loader computes for the pulse components (0: none, or the network
    computes its own pulse candidates)."""
    return n_components(config.time_pulse) if config.time_pulse_grid else 0


def _worker_init(worker_id: int) -> None:
    # DataLoader seeds torch in each worker; derive python/numpy seeds from it.
    seed_all(torch.initial_seed() % 2**32)


class Trainer:
    """One training run (one process of it under torchrun).

    ``resume=True`` continues the run in ``config.out`` from its latest checkpoint: the
    weights, optimizer state and counters are restored and, because every step is
    seeded from its number and every crop from (seed, pass, piece) (see
    :mod:`.batches`), the continuation is bit-identical to a run that was never
    stopped on the same machine, with or without data-loader workers (tested on CPU).
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False,
                 info: dd.DistInfo | None = None):
        self.cfg = config.validate()
        self.info = info or dd.info_from_env()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = dd.resolve_device(config.device, self.info)
        dd.init_process_group(self.info, self.device)
        self.amp_dtype = autocast_dtype(config.precision, self.device)
        self.run_dir = Path(config.out)
        self.ckpt_dir = self.run_dir / ck.CHECKPOINTS
        self.step = 0
        self.events = 0  # real (non-padding) target events seen, all ranks
        self.train_seconds = 0.0
        self.last_valid: dict[str, float] = {}
        self.last_checkpoint: Path | None = None

        resume_dir = self._find_resume() if resume else None
        if not resume and ck.list_checkpoints(self.ckpt_dir):
            raise UserError(f"{self.run_dir} already holds checkpoints: resume it (--resume) "
                            "or choose another run folder (--out)")
        seed_all(config.seed)  # identical initial weights on every rank
        if resume_dir is not None:
            self.model = sources.load_model(resume_dir)
        elif config.init_from:
            self.model = sources.grow_model(sources.load_model(ck.resolve_checkpoint(
                resolve_name(config.init_from))), config.model, config.init_from)
        else:
            self.model = sources.new_model(config.model)
        self.model.to(self.device)
        if config.freeze_rnn:
            frozen = sources.freeze_rnn(self.model)
            log.info("froze %d recurrent parameters", frozen)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise UserError("no trainable parameters left")
        self.params = params
        self.opt = torch.optim.AdamW(
            params, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
            weight_decay=config.weight_decay,
        )
        if resume_dir is not None:
            self._restore(resume_dir)
        self.net = dd.wrap_model(self.model, self.info, self.device)
        if config.compile:
            self.net = torch.compile(self.net)

        self.train_set = sources.open_dataset(config.data, "train", config.batch_len,
                                              config.aug, training=True, seed=config.seed)
        self.valid_set = sources.open_dataset(config.data, config.valid_split,
                                              config.valid_len, {}, training=False,
                                              seed=config.seed)
        weights = piece_weights(self.train_set.store, config.balance)  # None: uniform
        self.indexer = (StepIndexer if weights is None else WeightedStepIndexer)(
            len(self.train_set) if weights is None else weights, config.batch_size,
            seed=config.seed, rank=self.info.rank, world_size=self.info.world_size)
        self.epoch_steps = config.epoch_size or self.indexer.steps_per_epoch
        self.writer = None
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ck.sweep_partial(self.ckpt_dir)
            atomic_write_text(self.run_dir / "config.json",
                                 json.dumps(config.to_dict(), indent=2))
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra (notochord-rt[train])
                log.warning("tensorboard is not installed: no TensorBoard logs "
                            "(pip install 'notochord-rt[train]')")
            else:
                self.writer = SummaryWriter(str(self.run_dir / "logs"))

    # -- resume ---------------------------------------------------------------------------
    def _find_resume(self) -> Path:
        found = ck.latest_checkpoint(self.ckpt_dir)
        if found is None:
            raise UserError(f"nothing to resume: no checkpoint under {self.ckpt_dir}")
        return found

    def _restore(self, folder: Path) -> None:
        state = load_training_state(training_state_path(sources.model_path(folder)))
        try:
            self.opt.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer state in {folder} does not fit: {e}") from None
        restore_rng_state(state["rng"])
        c = state["step"]
        self.step, self.events = int(c["step"]), int(c["events"])
        self.train_seconds = float(state["extra"].get("train_seconds", 0.0))
        self.last_checkpoint = folder
        log.info("resumed from %s at step %d", folder, self.step)

    @property
    def epoch(self) -> int:
        return self.step // self.epoch_steps

    # -- data ---------------------------------------------------------------------------
    def _train_batches(self, start_step: int):
        cfg = self.cfg
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, self.info.rank, start_step))
        return iter(DataLoader(
            self.train_set, batch_sampler=self.indexer.iter_from(start_step),
            num_workers=cfg.num_workers,
            collate_fn=functools.partial(sources.collate, pitch_copy=self.model.config.pitch_copy,
                                         grid_lines=_grid_lines(self.model.config)),
            pin_memory=self.device.type == "cuda", generator=gen,
            worker_init_fn=_worker_init if cfg.num_workers else None,
            persistent_workers=cfg.num_workers > 0,
        ))

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        keys = (*BATCH_KEYS, *MOTIF_KEYS, *PULSE_KEYS)
        return {k: batch[k].to(self.device, non_blocking=nb) for k in keys if k in batch}

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- one step -------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Forward, loss, backward, clip and AdamW update on one batch; returns its logs."""
        cfg = self.cfg
        self.net.train()
        b = self._to_device(batch)
        with self._autocast():
            motif_in = (b["motif_cand"], b["motif_valid"]) if "motif_cand" in b else None
            pulse_in = (b["pulse_loc"], b["pulse_valid"]) if "pulse_loc" in b else None
            out = self.net(b["inst"], b["pitch"], b["time"], b["vel"], end=b["end"],
                           cond="random", motif_in=motif_in, pulse_in=pulse_in)
        mask = b["mask"][:, 1:]
        parts = masked_nll(out, mask)
        loss = sum(parts.values())
        # every rank sees the same mean values, so all ranks stop together on divergence
        shown = dd.all_reduce_mean(torch.stack([loss.detach(), *parts.values()]), self.info)
        if not bool(torch.isfinite(shown).all()):
            values = ", ".join(f"{k} {v:.4g}" for k, v in zip(("loss", *TERMS), shown.tolist()))
            raise TrainingDiverged(self._diverged_message(f"the loss is not finite ({values})"))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads)
        if not bool(torch.isfinite(norm)):
            raise TrainingDiverged(self._diverged_message(f"the gradient norm is {float(norm)}"))
        lr = cfg.lr * lr_factor(self.step, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps,
                                max_steps=cfg.max_steps, min_ratio=cfg.min_lr_ratio)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        n_events = dd.all_reduce_sum(mask.sum().detach().to(torch.float64), self.info)
        self.events += int(n_events)
        self.step += 1
        values = shown.tolist()
        logs = {"loss": values[0], **dict(zip(TERMS, values[1:]))}
        logs.update(grad_norm=float(norm), lr=lr)
        return logs

    def _diverged_message(self, what: str) -> str:
        if self.last_checkpoint is None:
            return (f"training stopped at step {self.step + 1}: {what}. No checkpoint was "
                    f"written by this run yet (any earlier one in {self.ckpt_dir} is "
                    "untouched). Lower the learning rate or check the data, then start again.")
        return (f"training stopped at step {self.step + 1}: {what}. "
                f"The last good checkpoint is {self.last_checkpoint}. Lower the learning "
                "rate, check the data, or resume from that checkpoint.")

    # -- validation -------------------------------------------------------------------------
    def _valid_index_batches(self) -> list[list[tuple[int, int]]]:
        """Fixed (draw, piece) items: every piece once per draw, so repeated pieces get
        other windows; one crop per piece when ``valid_batches`` is None."""
        n, bs = len(self.valid_set), self.cfg.batch_size
        total = n if self.cfg.valid_batches is None else self.cfg.valid_batches * bs
        perm = np.random.default_rng([self.cfg.seed, 104729]).permutation(n)
        order = [(i // n, int(perm[i % n])) for i in range(total)]
        return [order[i:i + bs] for i in range(0, len(order), bs)]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """NLL per sub-event on the validation crops under the canonical order i→p→t→v.

        The crops are the same at every call (fixed seeds), so values are comparable
        across epochs. Batches are shared out between ranks and the sums all-reduced.
        """
        self.model.eval()
        meter = NLLMeter()
        batches = self._valid_index_batches()
        for k in range(self.info.rank, len(batches), self.info.world_size):
            seed_all(step_seed(self.cfg.seed, 1_000_003 + k, 0))
            batch = self._to_device(sources.collate([self.valid_set[i] for i in batches[k]]))
            with self._autocast():
                out = self.model(batch["inst"], batch["pitch"], batch["time"], batch["vel"],
                                 end=batch["end"], cond=CANONICAL_ORDER)
            meter.add(out, batch["mask"][:, 1:])
        meter.load_tensor(dd.all_reduce_sum(meter.as_tensor(), self.info))
        self.last_valid = meter.means()
        return self.last_valid

    # -- checkpoints -------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "events": self.events,
                "world_size": self.info.world_size}

    def _write(self, folder: Path) -> None:
        sources.save_model(self.model, folder)
        save_training_state(training_state_path(sources.model_path(folder)),
                            optimizer=self.opt.state_dict(), step=self.counters(),
                            extra={"train_seconds": self.train_seconds})
        (folder / "train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        if self.last_valid:
            (folder / "valid.json").write_text(json.dumps(self.last_valid, indent=2))

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step atomically (rank 0); returns its folder."""
        path = None
        if self.info.is_main:
            path = ck.write_checkpoint(self.ckpt_dir, self.step, self._write,
                                       keep=self.cfg.keep_checkpoints)
            self.last_checkpoint = path
            log.info("checkpoint %s", path)
        dd.barrier(self.info)
        return path

    # -- the loop ---------------------------------------------------------------------------
    def _log(self, prefix: str, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, self.step)

    def _stop_reason(self, until_step: int | None, started: float) -> str | None:
        cfg = self.cfg
        if until_step is not None and self.step >= until_step:
            return "until_step"
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.epochs is not None and self.step >= cfg.epochs * self.epoch_steps:
            return "epochs"
        if cfg.time_limit is not None:
            late = torch.tensor(float(time.perf_counter() - started >= cfg.time_limit))
            if float(dd.all_reduce_sum(late, self.info)) > 0:  # rank clocks may differ
                return "time_limit"
        return None

    def fit(self, until_step: int | None = None,
            on_step: Callable[[int, dict[str, float], float], None] | None = None
            ) -> dict[str, Any]:
        """Train until max_steps / epochs / time_limit (or ``until_step``); returns a summary.

        Validates and checkpoints at the end of every epoch, every ``checkpoint_every``
        steps, and at the end. ``on_step(step, logs, seconds)`` is called after every
        optimisation step with the step's wall time (data loading included). Raises
        :class:`TrainingDiverged` on a non-finite loss.
        """
        cfg = self.cfg
        started = time.perf_counter()
        first_step = self.step
        bar = None
        if cfg.progress and self.info.is_main:
            from tqdm import tqdm

            total = cfg.max_steps or (cfg.epochs * self.epoch_steps if cfg.epochs else None)
            bar = tqdm(total=total, initial=self.step, desc="train", unit="step",
                       dynamic_ncols=True)
        batches = self._train_batches(self.step)
        saved_at = validated_at = -1
        reason = self._stop_reason(until_step, started)
        try:
            while reason is None:
                t0 = time.perf_counter()
                seed_all(step_seed(cfg.seed, self.info.rank, self.step))
                logs = self.train_step(next(batches))
                seconds = time.perf_counter() - t0
                self.train_seconds += seconds
                if on_step is not None:
                    on_step(self.step, logs, seconds)
                if self.step % cfg.log_every == 0:
                    self._log("train", logs)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.3f}", epoch=self.epoch)
                end_of_epoch = self.step % self.epoch_steps == 0
                if end_of_epoch:
                    self._log("valid", self.validate())
                    validated_at = self.step
                    if bar is not None:
                        bar.write(f"epoch {self.epoch}: valid NLL {self.last_valid['total']:.4f}")
                if end_of_epoch or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self.save_checkpoint()
                    saved_at = self.step
                reason = self._stop_reason(until_step, started)
        finally:
            if bar is not None:
                bar.close()
        if validated_at != self.step:
            self._log("valid", self.validate())
        if saved_at != self.step:
            self.save_checkpoint()
        if self.writer is not None:
            self.writer.flush()
        wall = time.perf_counter() - started
        steps = self.step - first_step
        return {
            "stopped": reason, "step": self.step, "epoch": self.epoch, "events": self.events,
            "steps_this_run": steps, "seconds": wall,
            "steps_per_s": steps / wall if wall > 0 else math.nan,
            "valid": dict(self.last_valid), "checkpoint": str(self.last_checkpoint),
        }

    def close(self) -> None:
        """Flush logs and leave the process group."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        dd.shutdown()
