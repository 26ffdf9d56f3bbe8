"""Typed schemas of the training configuration. Hydra composes `conf/` (the package robofm.conf) and merges it
into these, so a misspelt key or a value of the wrong type fails at start with a message naming the key; a value
outside its choices or range fails as the typed config is built (OmegaConf.to_object runs __post_init__), also
naming it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from robofm.errors import UsageError
from robofm.models.config import SHAPE, SIZES, shape_of
from robofm.objectives.objective import ObjectiveConfig
from robofm.tokenization.build import TokenizerConfig
from robofm.tokenization.sequence import SequenceConfig
from robofm.train.finetune import FinetuneConfig
from robofm.train.precision import PRECISIONS


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise UsageError(f"{key} must be {expected}, not {value!r}")


def _one_of(key: str, value: Any, choices) -> None:
    _check(key, value, value in choices, "one of " + ", ".join(map(str, choices)))


@dataclass
class DataConfig:
    """path: one store, or several (a mixture); weights: one per store (null: by mix_by, the stores' windows
    ("frames") or episodes); batch_size: samples per optimizer step and process (before accumulation splits it)."""

    path: Any = "outputs/demo/store"  # str or list of str
    weights: Any = None  # null or list of float, one per store
    mix_by: str = "frames"
    cameras: Any = None  # null (all) or list of camera names
    batch_size: int = 8
    num_workers: int = 2
    samples_per_epoch: int | None = None
    val_batches: int = 4
    shift: int = 0  # random-shift augmentation of training windows: each camera moves up to this many pixels
    allow_held_out_tasks: bool = False  # pretrain on MetaWorld ML45's test tasks (build.refuse_held_out_tasks)

    def __post_init__(self) -> None:
        _check("data.batch_size", self.batch_size, self.batch_size >= 1, ">= 1")
        _check("data.shift", self.shift, self.shift >= 0, ">= 0")
        _check("data.num_workers", self.num_workers, self.num_workers >= 0, ">= 0")
        _check("data.samples_per_epoch", self.samples_per_epoch,
               self.samples_per_epoch is None or self.samples_per_epoch >= 1, "null or >= 1")  # fmt: skip


@dataclass
class ModelSchema:
    """size: a preset of robofm.models.config.SIZES; dim, depth, heads, ffn_dim: null keeps the preset's, a value
    replaces it (`model.size=small model.dim=192 model.depth=6 model.heads=6`; ffn_dim 0: 8/3 of dim); attention:
    sdpa | flex; adaln: modulate the NOISY tokens in every block from their diffusion time and action chunk
    (robofm.models.backbone.Block); prev_frame_input: each NOISY token also takes in the patch it changes, from the
    frame before (robofm.models.robofm.RobofmModel)."""

    size: str = "small"
    attention: str = "sdpa"
    adaln: bool = False
    prev_frame_input: bool = True
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    ffn_dim: int | None = None

    def __post_init__(self) -> None:
        _one_of("model.size", self.size, list(SIZES))
        _one_of("model.attention", self.attention, ("sdpa", "flex"))
        shape_of(self.size, **self.shape())  # a dim that does not split into the heads fails here, naming the keys

    def shape(self) -> dict[str, int | None]:
        """The shape keys as given (None: the preset's), for models.config.model_config."""
        return {k: getattr(self, k) for k in SHAPE}


@dataclass
class OptimConfig:
    """AdamW with weight decay on matrices only; warmup, then cosine to min_lr_ratio * lr, or WSD (constant,
    then a linear decay over the last decay_fraction of the steps)."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | wsd | constant
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: float = 1.0
    accumulation: int = 1
    ema: float = 0.0  # 0: off; else the decay of an exponential moving average of the weights (warmed up: loop.ema_decay)

    def __post_init__(self) -> None:  # a bad schedule would otherwise surface only when the warmup ends
        _one_of("optim.schedule", self.schedule, ("cosine", "wsd", "constant"))
        _check("optim.warmup_steps", self.warmup_steps, self.warmup_steps >= 0, ">= 0")
        _check("optim.accumulation", self.accumulation, self.accumulation >= 1, ">= 1")
        _check("optim.ema", self.ema, 0 <= self.ema < 1, "in [0, 1)")


@dataclass
class GuardConfig:
    """Loss-spike guard: skip a step whose loss or gradient norm is non-finite, or more than k_sigma standard
    deviations above the mean of the last `window` good steps (after `warmup` good steps); after max_skips
    skips within `window` steps, roll back to the last checkpoint and skip the batches that caused them."""

    enabled: bool = True
    window: int = 50
    warmup: int = 20
    k_sigma: float = 6.0
    max_skips: int = 3

    def __post_init__(self) -> None:  # the window holds `window` steps at most: a longer warmup would never end
        _check("trainer.guard.warmup", self.warmup, 0 <= self.warmup <= self.window, f"in [0, window={self.window}]")
        _check("trainer.guard.k_sigma", self.k_sigma, self.k_sigma > 0, "> 0")
        _check("trainer.guard.max_skips", self.max_skips, self.max_skips >= 1, ">= 1")


@dataclass
class TrainerConfig:
    strategy: str = "single"  # single | ddp | fsdp
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 where the device runs it faster: robofm.train.precision) | fp32 | bf16
    max_steps: int = 1000
    max_minutes: float | None = None  # stop (and checkpoint) after this long
    checkpoint_every: int = 200
    keep_last: int = 3
    log_every: int = 10
    val_every: int = 200
    deterministic: bool = False
    compile: bool = False
    tensorboard: bool = True
    wandb: bool = False
    # what the export holds: the weights of the last step, or those of the validation with the lowest held-out
    # action loss (val_action; kept in RUN/best/ as the run goes, the EMA weights when the run keeps an EMA)
    select: str = "last"
    guard: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        _one_of("trainer.strategy", self.strategy, ("single", "ddp", "fsdp"))
        _one_of("trainer.device", self.device, ("auto", "cpu", "cuda"))
        _one_of("trainer.precision", self.precision, PRECISIONS)
        _one_of("trainer.select", self.select, ("last", "val_action"))
        for key in ("max_steps", "checkpoint_every", "keep_last", "val_every"):
            _check(f"trainer.{key}", getattr(self, key), getattr(self, key) >= 0, ">= 0")
        _check("trainer.log_every", self.log_every, self.log_every >= 1, ">= 1")


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSchema = field(default_factory=ModelSchema)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 0
    resume: str | None = None  # null | auto | a checkpoint folder
    init_from: str | None = None  # a pretrained base (export or run folder) to fine-tune; see robofm.train.finetune

    def __post_init__(self) -> None:  # accumulation splits the batch into equal micro-batches
        _check("data.batch_size", self.data.batch_size, self.data.batch_size % self.optim.accumulation == 0,
               f"a multiple of optim.accumulation={self.optim.accumulation}")  # fmt: skip
        _check("trainer.select", self.trainer.select, not (self.trainer.select == "val_action" and self.optim.ema),
               "last with optim.ema > 0 (the validation scores the raw weights, not the EMA that would be kept)")  # fmt: skip
        _check("optim.ema", self.optim.ema, not (self.finetune.mode == "lora" and self.optim.ema),
               "0 with finetune.mode=lora (the export merges the adapters of the trained weights)")  # fmt: skip


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
