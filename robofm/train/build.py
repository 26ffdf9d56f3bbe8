"""Build everything a run needs from its typed config, in one place."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from robofm.data.dataset import EpisodeWindowDataset, StoreSpec
from robofm.errors import UsageError
from robofm.models.config import model_config
from robofm.models.robofm import RobofmModel
from robofm.sim.tasks import HELD_OUT_INSTRUCTIONS
from robofm.tokenization.build import build_sequence_builder, load_sequence_builder
from robofm.tokenization.sequence import SequenceBuilder
from robofm.train.config import DataConfig, OptimConfig, TrainConfig


def store_specs(data: DataConfig) -> list[StoreSpec]:
    paths = [data.path] if isinstance(data.path, str | Path) else list(data.path)
    weights = list(data.weights) if data.weights is not None else [None] * len(paths)
    if len(weights) != len(paths):
        raise UsageError(f"data.weights has {len(weights)} entries for {len(paths)} stores in data.path")
    return [StoreSpec(p, w) for p, w in zip(paths, weights, strict=True)]


def build_datasets(cfg: TrainConfig, rank: int = 0,
                   world_size: int = 1) -> tuple[EpisodeWindowDataset, EpisodeWindowDataset | None]:  # fmt: skip
    """Train and validation windows (validation: None when the stores hold no long enough val episodes)."""
    specs = store_specs(cfg.data)
    latents = cfg.tokenizer.image == "latent"
    common = dict(window_len=cfg.sequence.window_len, stride=cfg.sequence.stride, cameras=cfg.data.cameras,
                  latents=latents, mix_by=cfg.data.mix_by)  # fmt: skip
    train = EpisodeWindowDataset(specs, split="train", seed=cfg.seed, samples_per_epoch=cfg.data.samples_per_epoch,
                                 rank=rank, world_size=world_size, shift=cfg.data.shift, **common)  # fmt: skip
    if train.samples_per_epoch < cfg.data.batch_size * world_size:  # an epoch without one batch would loop forever
        raise UsageError(f"an epoch of {train.samples_per_epoch} samples holds no batch of data.batch_size="
                         f"{cfg.data.batch_size} x {world_size} processes: lower the batch size or add data "
                         f"(or raise data.samples_per_epoch)")  # fmt: skip
    try:
        val = EpisodeWindowDataset(specs, split="val", seed=cfg.seed + 1, rank=rank, world_size=world_size, **common)
    except UsageError:
        val = None
    return train, val


def refuse_held_out_tasks(cfg: TrainConfig, train: EpisodeWindowDataset) -> None:
    """Pretraining (no init_from) on episodes of MetaWorld ML45's test tasks (robofm.sim.tasks.HELD_OUT_TASKS, known
    by their instructions) would contaminate the few-shot benchmark that fine-tunes on them: UsageError naming the
    store and the tasks, unless data.allow_held_out_tasks. Every split counts: a val episode is data too."""
    if cfg.init_from or cfg.data.allow_held_out_tasks:
        return
    for store in train.stores:
        found = sorted({HELD_OUT_INSTRUCTIONS[e.task.strip()] for e in store.episodes
                        if e.task.strip() in HELD_OUT_INSTRUCTIONS})  # fmt: skip
        if found:
            raise UsageError(f"{store.root}: holds episodes of {', '.join(found)}, test tasks of MetaWorld ML45 that "
                             f"no pretraining corpus may hold (the few-shot benchmark fine-tunes on them): fine-tune "
                             f"on them with init_from=BASE, or pretrain on them anyway with "
                             f"data.allow_held_out_tasks=true")  # fmt: skip


def build_builder(cfg: TrainConfig, train: EpisodeWindowDataset, saved: Path | None = None) -> SequenceBuilder:
    """The run's tokenization: loaded from `saved` (a resumed run) or built (and FAST fitted) from the data."""
    if saved is not None and (saved / "sequence.json").is_file():
        return load_sequence_builder(saved)
    return build_sequence_builder(train, cfg.sequence, cfg.tokenizer)


def build_model(cfg: TrainConfig, builder: SequenceBuilder) -> RobofmModel:
    model = cfg.model
    return RobofmModel(model_config(builder, model.size, attention=model.attention, adaln=model.adaln,
                                    prev_frame_input=model.prev_frame_input, **model.shape()))  # fmt: skip


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on the matrices of linear layers only (not on norms or embedding tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim == 2 and "emb" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), fused=False)


def lr_factor(step: int, max_steps: int, optim: OptimConfig) -> float:
    """The learning-rate multiplier at `step` (0-based): linear warmup, then cosine to min_lr_ratio, WSD, or
    constant. The decays reach min_lr_ratio at the last step, max_steps - 1."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    last = max_steps - 1
    if optim.schedule == "wsd":
        decay_start = max_steps - int(optim.decay_fraction * max_steps)
        if step < decay_start:
            return 1.0
        frac = min((step - decay_start) / max(last - decay_start, 1), 1.0)
        return 1.0 - (1.0 - optim.min_lr_ratio) * frac
    if optim.schedule == "cosine":
        frac = min((step - optim.warmup_steps) / max(last - optim.warmup_steps, 1), 1.0)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    raise UsageError(f"optim.schedule must be cosine, wsd or constant, not {optim.schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.trainer.max_steps, cfg.optim))
