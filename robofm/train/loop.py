"""The training loop: data position, optimizer steps under the spike guard, logging, validation, checkpoints."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from robofm.data.store import write_json_atomic
from robofm.errors import UsageError
from robofm.models.card import data_summary
from robofm.models.pretrained import export, from_pretrained, latest_checkpoint, resolve_checkpoint
from robofm.models.robofm import RobofmModel
from robofm.objectives.objective import Objective
from robofm.tokenization.build import save_sequence_builder
from robofm.tokenization.sequence import Sequence
from robofm.train import finetune, parallelize
from robofm.train.build import (
    build_builder,
    build_datasets,
    build_model,
    build_optimizer,
    build_scheduler,
    refuse_held_out_tasks,
)
from robofm.train.checkpoint import load_checkpoint, save_checkpoint
from robofm.train.config import TrainConfig
from robofm.train.guard import SpikeGuard
from robofm.train.logger import MetricsLogger
from robofm.train.plan import peak_flops, print_plan
from robofm.train.precision import resolve_precision

log = logging.getLogger(__name__)
BEST = "best"  # RUN/best/: the weights trainer.select=val_action exports
TERMS = ("total", "action", "text", "frame", "z", "action_accuracy")


@dataclass
class Position:
    """Where training is: the next optimizer step, and the next batch (epoch, index within the epoch)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    skip: set[tuple[int, int]] = field(default_factory=set)  # batches a rollback set aside


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, config_yaml: str, command: dict | None = None) -> None:
        """command: how the run was asked for ({"experiment": NAME, "overrides": [...]}, from Hydra), for the model
        card's recipe."""
        self.cfg, self.run_dir, self.config_yaml, self.command = cfg, Path(run_dir), config_yaml, command or {}
        self.dist = parallelize.init(cfg.trainer)
        self.run_dir = parallelize.broadcast(self.run_dir, self.dist)  # Hydra's ${now} may differ between ranks
        self.device = self.dist.device
        if cfg.trainer.deterministic:
            # cuBLAS is deterministic only with a fixed workspace, read when its first handle is made (not yet)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True)
        _seed_everything(cfg.seed)
        resume = self._resume_path()
        self.train_ds, self.val_ds = build_datasets(cfg, self.dist.rank, self.dist.world_size)
        refuse_held_out_tasks(cfg, self.train_ds)
        fit_ds = build_datasets(cfg)[0] if self.dist.distributed else self.train_ds  # one tokenization for all ranks
        base = from_pretrained(cfg.init_from) if cfg.init_from else None  # fine-tuning: robofm.train.finetune
        self.base_stores = (base.stores if base.trained_on else None) if base is not None else []  # None: unknown
        # a resumed run keeps the tokenization of the run it resumes (a FAST fit on other data would differ)
        saved = resume.parent.parent / "tokenization" if resume else None
        if base is not None and saved is None:
            self.builder = finetune.adapt_builder(base.builder, fit_ds, cfg.sequence, cfg.finetune.norm)
        else:
            self.builder = build_builder(cfg, fit_ds, saved)
        # a fresh start replaces what a run killed before its first checkpoint left (its config may have differed)
        if self.dist.is_main and (not resume or not (self.run_dir / "tokenization" / "sequence.json").exists()):
            save_sequence_builder(self.builder, self.run_dir / "tokenization")
        if base is None:
            self.model = build_model(cfg, self.builder)
        else:
            self.model = RobofmModel(finetune.adapt_model_config(base.model.cfg, self.builder))
            if not resume:
                report = finetune.load_base_weights(self.model, base.model.state_dict())
                log.info("fine-tuning %s: %d tensors copied, %d grown (%s), %d new", cfg.init_from,
                         len(report["copied"]), len(report["grown"]), ", ".join(report["grown"]) or "-",
                         len(report["new"]))  # fmt: skip
        self.model = finetune.apply_mode(self.model, cfg.finetune).to(self.device)
        if base is not None:
            n, total = finetune.trainable(self.model)
            log.info("finetune.mode=%s: %.2fM of %.2fM parameters train", cfg.finetune.mode, n / 1e6, total / 1e6)
        self.objective = Objective(cfg.objective)
        self.guard = SpikeGuard(cfg.trainer.guard)
        self.pos = Position()
        self.ema = None
        self.best = None  # trainer.select=val_action: the best validation so far (a resumed run reads it back)
        checkpoint = load_checkpoint(resume) if resume else None  # read once: weights and state, then optimizer
        if checkpoint:
            self._load(resume, checkpoint)
            self.best = parallelize.broadcast(self._read_best(), self.dist)  # rank 0's file: one choice for all
        self.train_model = parallelize.wrap(self.model, cfg.trainer, self.dist)
        self.ema = parallelize.shard_like(self.ema, self.model)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        if checkpoint:
            self._load_optimizer(checkpoint)
        choice = None
        if self.dist.is_main:  # resolved once, by rank 0 (auto may measure the CPU): every rank runs the same
            choice = resolve_precision(cfg.trainer.precision, self.device, self.model.cfg.dim)
            log.info("trainer.precision=%s runs %s", cfg.trainer.precision, choice[1])
        self.precision, self.precision_reason = parallelize.broadcast(choice, self.dist)
        self.logger = MetricsLogger(self.run_dir, enabled=self.dist.is_main, tensorboard=cfg.trainer.tensorboard,
                                    wandb=cfg.trainer.wandb, config=OmegaConf.to_container(OmegaConf.structured(cfg)))  # fmt: skip
        self.autocast = parallelize.autocast(self.precision, self.device)
        if resume:  # metrics.jsonl lines from here on supersede those of the same steps written before the kill
            self.logger.log({"event": "resume", "step": self.pos.step, "from": str(resume)})

    # ------------------------------------------------------------------------------------------------ state

    def _resume_path(self) -> Path | None:
        if self.cfg.resume in (None, "", "none"):
            if self.dist.is_main and latest_checkpoint(self.run_dir):
                log.warning("%s holds checkpoints of an earlier run: starting afresh over them (resume=auto would "
                            "continue it)", self.run_dir)  # fmt: skip
            return None
        if self.cfg.resume == "auto":
            return latest_checkpoint(self.run_dir)
        return resolve_checkpoint(self.cfg.resume)

    def _load(self, path: Path, checkpoint: tuple) -> None:
        """Weights, EMA, data position, guard and RNG states of a checkpoint read by load_checkpoint(path)."""
        weights, state, ema = checkpoint
        parallelize.load_model_state(self.model, weights)
        self.ema = parallelize.shard_like(ema, self.model)
        self.pos = Position(state["step"], state["epoch"], state["batch"], {tuple(b) for b in state["skip"]})
        self.guard.load_state_dict(state["guard"])
        self._rng = state["rng"]
        _set_rng(self._rng)
        if self.dist.is_main:
            pos = self.pos
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, pos.step, pos.epoch, pos.batch)

    def _load_optimizer(self, checkpoint: tuple) -> None:
        _, state, _ = checkpoint
        parallelize.load_optimizer_state(self.model, self.optimizer, state["optimizer"], self.dist)
        self.scheduler.load_state_dict(state["scheduler"])

    def save(self) -> Path | None:
        weights = parallelize.full_state_dict(self.model, self.dist)
        optim = parallelize.full_optimizer_state(self.model, self.optimizer, self.dist)
        ema = parallelize.full_tensors(self.ema)
        if not self.dist.is_main:
            return None
        state = {"step": self.pos.step, "epoch": self.pos.epoch, "batch": self.pos.batch,
                 "skip": sorted(self.pos.skip), "guard": self.guard.state_dict(), "optimizer": optim,
                 "scheduler": self.scheduler.state_dict(), "rng": _get_rng(), "precision": self.precision}  # fmt: skip
        return save_checkpoint(self.run_dir, self.pos.step, weights, state, self.config_yaml,
                               self.cfg.trainer.keep_last, ema)  # fmt: skip

    # ------------------------------------------------------------------------------------------------ data

    def batches(self) -> Iterator[tuple[tuple[int, int], Sequence]]:
        """(epoch, batch) and the batch, from the current position on, across epochs (a new loader per epoch, so
        forked workers see the epoch). Batches a rollback set aside are not drawn."""
        bsz = self.cfg.data.batch_size
        while True:
            self.train_ds.set_epoch(self.pos.epoch)
            n = self.train_ds.samples_per_epoch // (self.dist.world_size * bsz)  # the same on every rank
            loader = DataLoader(self.train_ds, batch_size=bsz, sampler=range(self.pos.batch * bsz, n * bsz),
                                num_workers=self.cfg.data.num_workers, collate_fn=self.builder, drop_last=True,
                                pin_memory=self.device.type == "cuda")  # fmt: skip
            for i, seq in enumerate(loader, start=self.pos.batch):
                if (self.pos.epoch, i) not in self.pos.skip:
                    yield (self.pos.epoch, i), seq
            self.pos.epoch, self.pos.batch = self.pos.epoch + 1, 0

    # ------------------------------------------------------------------------------------------------ steps

    def step(self, seq: Sequence) -> dict[str, float]:
        """Forward and backward over the batch in `accumulation` micro-batches; returns the losses (averaged over
        the micro-batches and processes) and the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        acc = self.cfg.optim.accumulation
        b = seq.ids.shape[0]
        totals = {k: 0.0 for k in TERMS}
        for i in range(acc):
            micro = seq[i * b // acc : (i + 1) * b // acc].to(self.device)
            with parallelize.gradient_sync(self.train_model, enabled=i == acc - 1):
                with self.autocast:
                    out = self.objective(self.train_model, micro)
                (out["total"] / acc).backward()
            for k in TERMS:
                totals[k] += float(out[k].detach()) / acc
        grad_norm = parallelize.clip_grad_norm(self.model, self.cfg.optim.grad_clip)
        return {**parallelize.mean_across(totals, self.dist), "grad_norm": grad_norm}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val_ds is None:
            return {}
        self.model.eval()
        loader = DataLoader(self.val_ds, batch_size=self.cfg.data.batch_size, num_workers=0, collate_fn=self.builder,
                            sampler=range(min(self.val_ds.samples_per_epoch // self.dist.world_size,
                                              self.cfg.data.val_batches * self.cfg.data.batch_size)))  # fmt: skip
        sums, n = {k: 0.0 for k in TERMS}, 0
        for seq in loader:
            with self.autocast:
                out = self.objective(self.model, seq.to(self.device))
            for k in TERMS:
                sums[k] += float(out[k])
            n += 1
        self.model.train()
        return {f"val/{k}": v / max(n, 1) for k, v in parallelize.mean_across(sums, self.dist).items()}

    def rollback(self, bad: list[tuple[int, int]]) -> None:
        """Back to the last checkpoint; the batches that caused the skips are set aside for good."""
        path = latest_checkpoint(self.run_dir)
        skip = self.pos.skip | set(bad)
        if path is None:
            log.warning("rollback asked at step %d before any checkpoint: skipping batches %s", self.pos.step, bad)
            self.pos.skip = skip
            return
        checkpoint = load_checkpoint(path)
        self._load(path, checkpoint)
        self._load_optimizer(checkpoint)
        if self.best is not None and self.best["step"] > self.pos.step:  # chosen on the path the rollback left
            self.best = None
        self.pos.skip |= skip
        self.guard.skips.clear()  # the skips that led here are answered: their batches are set aside
        self.logger.event({"step": self.pos.step, "event": "rollback", "to": str(path), "skip_batches": sorted(skip)})

    # ------------------------------------------------------------------------------------------------ run

    def fit(self) -> Path | None:
        cfg, tr = self.cfg, self.cfg.trainer
        self.model.train()
        if self.dist.is_main:
            print_plan(cfg, self.model, self.builder, self.train_ds, precision=self.precision_reason)
        start, data_wait, tokens, first_step = time.perf_counter(), 0.0, 0, self.pos.step
        flops_per_token = 6 * sum(p.numel() for p in self.model.parameters())
        peak = peak_flops(self.device) * self.dist.world_size
        bad: list[tuple[int, int]] = []
        with self.logger.progress(tr.max_steps, self.pos.step) as bar:
            batches = self.batches()
            while self.pos.step < tr.max_steps:
                t0 = time.perf_counter()
                where, seq = next(batches)
                data_wait += time.perf_counter() - t0
                self.pos.epoch, self.pos.batch = where[0], where[1] + 1
                stats = self.step(seq)
                action = self.guard.check(self.pos.step, stats["total"], stats["grad_norm"])
                if action != "ok":
                    self.optimizer.zero_grad(set_to_none=True)
                    bad.append(where)
                    self.logger.event({"event": "guard", **self.guard.events[-1], "batch": list(where)})
                    if action == "rollback":
                        self.rollback(bad)
                        batches.close()  # its loader (and workers) read from the abandoned position
                        bad, batches = [], self.batches()
                    continue
                self.optimizer.step()
                self.scheduler.step()
                self._update_ema()
                self.pos.step += 1
                tokens += int(seq.meta.valid.sum()) * self.dist.world_size
                elapsed = time.perf_counter() - start
                metrics = {"step": self.pos.step, "loss": stats["total"], **stats, "lr": self.scheduler.get_last_lr()[0],
                           "tokens_per_s": tokens / elapsed, "samples_per_s": (self.pos.step - first_step)
                           * cfg.data.batch_size * self.dist.world_size / elapsed, "data_wait": data_wait / elapsed,
                           "elapsed_s": elapsed, "data_wait_s": data_wait}  # fmt: skip
                if peak:
                    metrics["mfu"] = flops_per_token * tokens / elapsed / peak
                if self.pos.step - first_step == 5 and self.dist.is_main:  # the plan's duration, from measured steps
                    left = elapsed / 5 * (tr.max_steps - self.pos.step)
                    capped = f" (trainer.max_minutes={tr.max_minutes} stops it sooner)" if tr.max_minutes and \
                        left > 60 * tr.max_minutes - elapsed else ""
                    log.info("estimated time to step %d: %.1f min at %.2f s/step%s", tr.max_steps, left / 60,
                             elapsed / 5, capped)  # fmt: skip
                bar.update(metrics)
                if self.pos.step % tr.log_every == 0 or self.pos.step == tr.max_steps:
                    self.logger.log({**metrics, **parallelize.memory(self.device), "precision": self.precision})
                if tr.val_every and self.pos.step % tr.val_every == 0:
                    self._validate_and_select()
                if tr.checkpoint_every and self.pos.step % tr.checkpoint_every == 0:
                    self.save()
                    bad.clear()  # a rollback returns here at the earliest: earlier batches are behind it
                if tr.max_minutes and elapsed > 60 * tr.max_minutes:
                    log.info("stopping at step %d: trainer.max_minutes=%s reached", self.pos.step, tr.max_minutes)
                    break
        if not tr.checkpoint_every or self.pos.step % tr.checkpoint_every:
            self.save()
        if tr.select != "last" and (not tr.val_every or self.pos.step % tr.val_every):
            self._validate_and_select()  # the last step is a candidate too
        out = None
        weights = self._export_weights()
        if self.best is not None:
            log.info("exporting step %d, the lowest val/action (%.4f) of the run (trainer.select=%s)",
                     self.best["step"], self.best["val/action"], tr.select)  # fmt: skip
            weights = load_file(str(self.run_dir / BEST / "model.safetensors")) if self.dist.is_main else weights
        if self.dist.is_main:
            trained_on = {"stores": [str(st.root.resolve()) for st in self.train_ds.stores],
                          "embodiments": sorted({e for st in self.train_ds.stores for e in st.manifest["embodiments"]}),
                          "init_from": str(Path(cfg.init_from).resolve()) if cfg.init_from else None,
                          "base_stores": self.base_stores,
                          "selected": {"step": self.pos.step} if self.best is None else self.best,
                          "recipe": self._recipe(),
                          "data": data_summary(self.train_ds.stores, self.train_ds.split)}  # fmt: skip
            out = export(self.run_dir / "export", self.model, self.builder, self.objective.diffusion, weights,
                         trained_on, self.config_yaml)  # fmt: skip
        self.logger.close()
        parallelize.finish(self.dist)
        return out

    def _recipe(self) -> dict:
        """What made the export, for its card: the command and experiment, and the settings a recipe is told by."""
        cfg = self.cfg
        return {**self.command, "command": "robofm-finetune" if cfg.init_from else "robofm-train",
                "mode": cfg.finetune.mode if cfg.init_from else "from scratch", "steps": self.pos.step,
                "batch_size": cfg.data.batch_size, "lr": cfg.optim.lr, "schedule": cfg.optim.schedule,
                "warmup_steps": cfg.optim.warmup_steps, "ema": cfg.optim.ema, "shift": cfg.data.shift,
                "frame_weight": cfg.objective.frame_weight,
                "norm": cfg.finetune.norm if cfg.init_from else None}  # fmt: skip

    def _export_weights(self) -> dict[str, torch.Tensor]:
        """What an export holds: the EMA weights when the run keeps an EMA, else the model's, with LoRA adapters
        merged into their weights (every rank calls it: FSDP gathers)."""
        weights = parallelize.full_tensors(self.ema)
        if weights is None:
            weights = parallelize.full_state_dict(self.model, self.dist)
        if self.cfg.finetune.mode == "lora":  # the export is a plain model: adapters merged into their weights
            weights = finetune.merge_lora(self.model)
        return weights

    def _validate_and_select(self) -> None:
        """Validate and log; with trainer.select=val_action keep the weights of the lowest val/action so far in
        RUN/best/ (model.safetensors and best.json, which a resumed run reads back)."""
        metrics = self.validate()
        self.logger.log({"step": self.pos.step, **metrics})
        if self.cfg.trainer.select == "last" or "val/action" not in metrics:
            return
        value = metrics["val/action"]
        if self.best is not None and value >= self.best["val/action"]:
            return
        weights = self._export_weights()
        self.best = {"step": self.pos.step, "val/action": value}
        if self.dist.is_main:
            best = self.run_dir / BEST
            best.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().float().contiguous() for k, v in weights.items()},
                      str(best / "model.safetensors.tmp"))  # fmt: skip
            os.replace(best / "model.safetensors.tmp", best / "model.safetensors")
            write_json_atomic(best / "best.json", self.best)

    def _read_best(self) -> dict | None:
        """RUN/best/best.json, unless it is from beyond the resumed step (a path the run abandoned)."""
        path = self.run_dir / BEST / "best.json"
        if self.cfg.trainer.select == "last" or not path.is_file():
            return None
        try:
            best = json.loads(path.read_text())
            step = int(best["step"])
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{path} is damaged ({type(e).__name__}: {e}): delete {path.parent} to select again") from e
        return best if step <= self.pos.step else None

    @torch.no_grad()
    def _update_ema(self) -> None:
        if not self.cfg.optim.ema:
            return
        decay = ema_decay(self.cfg.optim.ema, self.pos.step)
        current = self.model.state_dict()
        if self.ema is None:
            self.ema = {k: v.detach().float().clone() for k, v in current.items()}
            return
        for k, v in current.items():
            self.ema[k].lerp_(v.detach().float(), 1 - decay)


def ema_decay(decay: float, step: int) -> float:
    """The EMA decay at optimizer step `step`: optim.ema, warmed up as (1 + step) / (10 + step) until it reaches it
    (diffusers' EMAModel), so early weights, a fine-tuning run's base among them, fade out within tens of steps
    rather than the 1 / (1 - decay) steps of the full decay (at 0.99, 60% of the step-50 EMA would be the base)."""
    return min(decay, (1 + step) / (10 + step))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _get_rng() -> dict:
    """RNG states as tensors and plain containers (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "python": random.getstate()}  # fmt: skip


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
