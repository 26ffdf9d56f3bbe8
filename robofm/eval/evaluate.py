"""Held-out evaluation of a pretrained model against honest baselines, on the same windows.

Each window read from the store has K + H_max - 1 steps (K: the model's window_len, s: its stride, H_max: the
longest kept horizon), so its frames run from step 0 to step K + H_max - 1. On it:

- Actions. The model sees K observations (frames, state and the executed chunks of steps 0..K-2) and predicts the
  chunk of step K-1 (the s actions after the last observation), greedily. MSE in robot units over the real
  dimensions of each window's embodiment, beside two baselines: `train_mean`, the mean action of the store's train
  split per embodiment (stats.json's `mean`, which covers every split, when the train split holds no actions of
  that embodiment), and `repeat_last`, the last executed action before the chunk, actions[:, K-2, -1], held for the
  whole chunk (needs K >= 2; null otherwise). Token accuracy and the action loss are the training objective's,
  teacher-forced, over every action token of the window's first K steps. With `actions_on=demonstrations` (the
  default) only windows of demonstrations count for all of these: episodes of kind expert, or that record no kind
  (robofm.sim.tasks.EPISODE_KINDS); a DART or exploring episode's executed actions say what the arm did, not what a
  policy should do, so they are no yardstick (they still drive the world model's imagination below).
- World model. From the same K observations the model imagines H_max frames under the window's real action
  chunks (those of steps K-1 .. K+H_max-2); horizon h compares imagined frame h with the real frame at step K+h-1.
  The imagination runs at two sampler settings: 1 step (for flow matching the one-step estimate of the posterior
  mean, E[x0 | pure noise, context], the blurred frame an MSE-trained head regresses) and `sampler_steps` N. At
  each, `shuffled_actions` is the same imagination, with the same noise, under the action chunks rolled by one
  across the batch, and `action_use` is model minus shuffled_actions (PSNR and SSIM; Genie's delta-t PSNR): a
  model that uses its actions does worse under shuffled ones. `copy_last` (the last observed frame, at every
  horizon) needs no sampler and is scored once. PSNR is that of the mean squared error over all frames and cameras
  of a horizon (finite even when some frames match exactly); SSIM is the mean over frames. Horizons longer than
  the store's longest episode of the split allows are dropped, and the result says so; episodes too short for the
  longest kept horizon are skipped.
- Verdicts: the bars of robofm.eval.verdicts, PASS, FAIL or n/a with the numbers, the frame bars at
  `verdict_sampler_steps`.

Reproducible: windows are drawn from `seed`, and each batch's diffusion noise from a generator seeded by
(seed, batch index).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from robofm.data.dataset import EpisodeWindowDataset
from robofm.data.store import EpisodeStore
from robofm.errors import UsageError
from robofm.eval import metrics
from robofm.eval.verdicts import verdicts
from robofm.models.diffusion import FrameDiffusion
from robofm.models.pretrained import Pretrained, from_pretrained
from robofm.models.robofm import RobofmModel
from robofm.models.sampling import imagine, predict_action_chunk
from robofm.objectives.objective import Objective, ObjectiveConfig
from robofm.sim.tasks import DEMONSTRATION_KINDS
from robofm.tokenization.sequence import IGNORE, TARGET_ACTION, SequenceBuilder


@dataclass
class EvalConfig:
    """What `robofm-eval` evaluates; see the module docstring for the metrics."""

    checkpoint: str
    data_path: str
    split: str = "val"
    out: str | None = None
    seed: int = 0
    batches: int = 8
    batch_size: int = 4
    horizons: tuple[int, ...] = (1, 4, 16)
    sampler_steps: int = field(default=10, metadata={"help": "N: frames are imagined with 1 step and with N steps"})
    verdict_sampler_steps: int | None = field(
        default=None, metadata={"help": "the setting the frame bars judge, 1 or sampler_steps; null: sampler_steps"}
    )
    device: str = "cpu"
    action_estimate: str = field(
        default="mean", metadata={"help": "mean | tokens: the chunk read from its slots (predict_action_chunk)"}
    )

    actions_on: str = field(
        default="demonstrations", metadata={"help": "demonstrations | all: the windows whose actions score the policy "
                                            "(demonstrations: of expert episodes, or of no recorded kind)"}
    )
    past_actions: str = field(
        default="auto", metadata={"help": "auto | visible | hidden: whether the policy sees the earlier action chunks "
                                  "(auto: hidden for a model trained with sequence.past_action_dropout > 0)"}
    )

    def sampler_settings(self) -> list[int]:
        """The sampler steps frames are imagined with: 1 and sampler_steps."""
        return sorted({1, self.sampler_steps})


# ------------------------------------------------------------------------------------------------ data


def plan_horizons(store: EpisodeStore, split: str, context: int, stride: int,
                  horizons: tuple[int, ...]) -> tuple[list[int], list[int]]:  # fmt: skip
    """(kept, dropped) horizons: a horizon is kept when the longest episode of the split holds a window of
    context + horizon - 1 steps ((context + horizon - 1) * stride + 1 frames)."""
    lengths = [e.length for e in store.episodes if e.split == split]
    if not lengths:
        splits = sorted({e.split for e in store.episodes})
        raise UsageError(f"{store.root} holds no episode in split {split!r}; it has splits {splits}")
    longest = max(lengths)
    kept = sorted({h for h in horizons if (context + h - 1) * stride + 1 <= longest})
    dropped = sorted({h for h in horizons} - set(kept))
    if not kept:
        raise UsageError(f"no horizon of {sorted(horizons)} fits the longest {split} episode of {store.root} "
                         f"({longest} frames) after {context} context steps at stride {stride}")  # fmt: skip
    return kept, dropped


def train_action_means(store: EpisodeStore, action_dim: int) -> tuple[dict[str, np.ndarray], str]:
    """Per embodiment, the mean action [action_dim] (padded with 0) of the store's train split, and its source."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for e in store.episodes:
        if e.split == "train" and e.has_action:
            a = np.asarray(store.arrays(e.id).action[:], np.float64)
            sums[e.embodiment] = sums.get(e.embodiment, 0) + a.sum(0)
            counts[e.embodiment] = counts.get(e.embodiment, 0) + len(a)
    means, fallback = {}, []
    for emb, st in store.stats.items():
        if emb in sums:
            mean = sums[emb] / counts[emb]
        elif (st or {}).get("action"):
            mean, _ = np.asarray(st["action"]["mean"], np.float64), fallback.append(emb)
        else:
            continue
        means[emb] = np.pad(mean, (0, action_dim - len(mean))).astype(np.float32)
    source = "train split" + (f"; stats.json (all splits) for {sorted(fallback)}" if fallback else "")
    return means, source


def first_steps(batch: dict, k: int, *, target: bool) -> dict:
    """The batch cut to its first k steps: frames (or latents) 0..k (0..k-1 without the target frame), state and
    action chunks 0..k-1."""
    frames = k + 1 if target else k
    out = {**batch, "state": batch["state"][:, :k], "actions": batch["actions"][:, :k]}
    for key in ("frames", "latents"):
        if key in batch:
            out[key] = batch[key][:, :, :frames]
    return out


# ------------------------------------------------------------------------------------------------ accumulators


@dataclass
class ActionTally:
    """Sums over windows, per embodiment: squared error per dimension of the model and baselines, and counts."""

    sq: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    correct: float = 0.0
    tokens: int = 0
    loss: float = 0.0

    def add(self, emb: str, errors: dict[str, Tensor | None]) -> None:
        """errors: per method, squared errors [s, n] of one window (None: the method has no prediction)."""
        per = self.sq.setdefault(emb, {})
        for name, err in errors.items():
            if err is not None:
                per[name] = per.get(name, 0) + err.double().sum(0).numpy()
        rows = next(e for e in errors.values() if e is not None).shape[0]
        self.count[emb] = self.count.get(emb, 0) + rows
        self.windows[emb] = self.windows.get(emb, 0) + 1

    def result(self, methods: tuple[str, ...]) -> dict:
        per_emb, total = {}, {m: [0.0, 0] for m in methods}
        for emb, per in sorted(self.sq.items()):
            per_emb[emb] = {"windows": self.windows[emb], "dims": len(next(iter(per.values())))}
            for m in methods:
                mse = per[m] / self.count[emb] if m in per else None
                per_emb[emb][m] = None if mse is None else mse.tolist()
                if m in per:
                    total[m][0] += float(per[m].sum())
                    total[m][1] += self.count[emb] * len(per[m])
        return {
            "token_accuracy": self.correct / self.tokens if self.tokens else None,
            "action_loss": self.loss / self.tokens if self.tokens else None,
            "mse": {m: (s / n if n else None) for m, (s, n) in total.items()},
            "per_embodiment": per_emb,
        }


@dataclass
class FrameTally:
    """Per key ((horizon, method) or (horizon, method, sampler steps)): summed squared error (per pixel mean of each
    image), summed SSIM and the image count."""

    mse: dict = field(default_factory=dict)
    ssim: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)

    def add(self, key: tuple, pred: Tensor, truth: Tensor, valid: Tensor) -> None:
        """pred, truth: uint8 [B, C, H, W, 3]; valid: bool [B, C] (cameras the window has)."""
        p, t = pred[valid], truth[valid]  # (N, H, W, 3)
        self.mse[key] = self.mse.get(key, 0.0) + float(metrics.mse(p, t).sum())
        self.ssim[key] = self.ssim.get(key, 0.0) + float(metrics.ssim(p, t).sum())
        self.images[key] = self.images.get(key, 0) + len(p)

    def score(self, key: tuple) -> dict:
        """{"psnr", "ssim", "frames"} of a key (None where not finite)."""
        n = self.images.get(key, 0)
        mse = self.mse[key] / n if n else math.nan
        ssim = self.ssim[key] / n if n else math.nan
        psnr = float(metrics.psnr_from_mse(mse))
        return {"psnr": metrics.finite_or_none(psnr), "ssim": metrics.finite_or_none(ssim), "frames": n}

    def result(self, horizons: list[int], sampler_steps: list[int]) -> dict:
        """Per horizon: copy_last, and per sampler setting the sampled methods and their differences."""
        out = {}
        for h in horizons:
            copy_last = self.score((h, "copy_last"))
            per_steps = {}
            for n in sampler_steps:
                row = {m: self.score((h, m, n)) for m in SAMPLED_METHODS}
                row["action_use"] = _differences(row["model"], row["shuffled_actions"])
                row["gain_over_copy_last"] = _differences(row["model"], copy_last)
                per_steps[str(n)] = row
            out[str(h)] = {"copy_last": copy_last, "sampler_steps": per_steps}
        return out


def _differences(a: dict, b: dict) -> dict:
    return {k: _diff(a[k], b[k]) for k in ("psnr", "ssim")}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# ------------------------------------------------------------------------------------------------ evaluation

ACTION_METHODS = ("model", "train_mean", "repeat_last")
FRAME_METHODS = ("model", "copy_last", "shuffled_actions")
SAMPLED_METHODS = ("model", "shuffled_actions")  # scored at each sampler setting; copy_last once per horizon
FRAME_DIFFERENCES = ("action_use", "gain_over_copy_last")  # model minus shuffled_actions, model minus copy_last


def evaluate(cfg: EvalConfig, loaded: Pretrained | None = None, progress: bool = False) -> dict:
    """Evaluate cfg.checkpoint on up to cfg.batches batches of held-out windows; returns the JSON-ready result
    (and writes it to cfg.out when set). `progress` shows a rich progress bar on stderr."""
    if cfg.batches < 1 or cfg.batch_size < 1 or cfg.sampler_steps < 1 or not cfg.horizons or min(cfg.horizons) < 1:
        raise UsageError("batches, batch_size, sampler_steps and every horizon must be >= 1")
    verdict_steps = cfg.sampler_steps if cfg.verdict_sampler_steps is None else cfg.verdict_sampler_steps
    if verdict_steps not in cfg.sampler_settings():
        raise UsageError(f"verdict_sampler_steps must be 1 or sampler_steps ({cfg.sampler_steps}), not {verdict_steps}")
    if cfg.actions_on not in ("demonstrations", "all"):
        raise UsageError(f"actions_on must be demonstrations or all, not {cfg.actions_on!r}")
    if cfg.past_actions not in ("auto", "visible", "hidden"):
        raise UsageError(f"past_actions must be auto, visible or hidden, not {cfg.past_actions!r}")
    loaded = loaded or from_pretrained(cfg.checkpoint, cfg.device)
    model, builder = loaded.model, loaded.builder
    hide = builder.hides_past_actions if cfg.past_actions == "auto" else cfg.past_actions == "hidden"
    k, s = builder.cfg.window_len, builder.cfg.stride
    store = EpisodeStore(cfg.data_path)
    kept, dropped = plan_horizons(store, cfg.split, k, s, tuple(cfg.horizons))
    ds = EpisodeWindowDataset(cfg.data_path, k + max(kept) - 1, s, split=cfg.split, seed=cfg.seed,
                              cameras=builder.cameras, latents=builder.image.input_key == "latents")  # fmt: skip
    means, mean_source = train_action_means(store, builder.action_dim)
    diffusion = loaded.diffusion
    objective = Objective(ObjectiveConfig(frame_diffusion=diffusion.kind))
    n_batches = min(cfg.batches, math.ceil(len(ds) / cfg.batch_size))
    actions, frames = ActionTally(), FrameTally()
    with torch.random.fork_rng(), _progress(progress, n_batches) as advance:
        torch.manual_seed(cfg.seed)
        for i in range(n_batches):
            items = [ds[j] for j in range(i * cfg.batch_size, min((i + 1) * cfg.batch_size, len(ds)))]
            batch = default_collate(items)
            _score_actions(model, builder, objective, batch, means, actions, cfg.action_estimate, hide,
                           cfg.actions_on)  # fmt: skip
            _score_frames(model, builder, diffusion, batch, kept, cfg, i, frames)
            advance()
    result = {
        "checkpoint": str(cfg.checkpoint), "loaded": loaded.source, "store": str(cfg.data_path), "split": cfg.split,
        "seed": cfg.seed, "batches": n_batches, "windows": min(len(ds), n_batches * cfg.batch_size),
        "batch_size": cfg.batch_size, "context_steps": k, "stride": s, "frame_diffusion": diffusion.settings(),
        "sampler_steps": cfg.sampler_settings(), "verdict_sampler_steps": verdict_steps,
        "action_estimate": cfg.action_estimate, "past_actions": "hidden" if hide else "visible",
        "actions_on": cfg.actions_on,
        "horizons": kept, "dropped_horizons": dropped, "train_mean_source": mean_source,
        "notes": _notes(cfg, ds, k, s, dropped, diffusion),
        "methods": {"actions": list(ACTION_METHODS), "frames": list(FRAME_METHODS),
                    "frame_differences": list(FRAME_DIFFERENCES)},  # the columns, for readers
        "actions": actions.result(ACTION_METHODS),
        "world_model": frames.result(kept, cfg.sampler_settings()),
    }  # fmt: skip
    result["verdicts"] = verdicts(result, verdict_steps)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=1))
    return result


def _notes(
    cfg: EvalConfig, ds: EpisodeWindowDataset, k: int, s: int, dropped: list[int], diffusion: FrameDiffusion
) -> list[str]:
    """What a reader of the numbers must know: dropped horizons, baselines that could not run, skipped episodes."""
    notes = []
    if dropped:
        notes.append(f"horizons {dropped} dropped: the longest {cfg.split} episode holds no window of "
                     f"{k} context steps + that horizon at stride {s}")  # fmt: skip
    if k < 2:
        notes.append("repeat_last needs a window of >= 2 steps (the model's window_len is 1): not computed")
    if cfg.batch_size == 1 or len(ds) == 1:
        notes.append("shuffled_actions rolls chunks across a batch: with one window per batch it equals model")
    if diffusion.kind == "ddpm":
        ddim = "one DDIM step at diffusers' leading spacing (timestep 0), not the posterior mean"
        notes.append(f"with ddpm, 1 sampler step is {ddim}")
    kinds = {e.kind_name for eps in ds.episodes for e in eps if e.kind not in DEMONSTRATION_KINDS}
    if cfg.actions_on == "demonstrations" and kinds:
        notes.append(f"actions are scored on the windows of demonstrations alone (expert episodes, or of no recorded "
                     f"kind), the model and the baselines alike, not on those of {', '.join(sorted(kinds))} episodes "
                     f"(actions_on=all scores every window)")  # fmt: skip
    if ds.too_short:
        notes.append(f"{len(ds.too_short)} {cfg.split} episodes are too short for the longest horizon and were skipped")
    return notes


def _score_actions(model: RobofmModel, builder: SequenceBuilder, objective: Objective, batch: dict,
                   means: dict[str, np.ndarray], tally: ActionTally, estimate: str, hide: bool,
                   actions_on: str) -> None:  # fmt: skip
    k = builder.cfg.window_len
    scored = [b for b in range(len(batch["embodiment"])) if batch["action_mask"][b].any()  # action-free: nothing
              and (actions_on == "all" or int(batch["kind"][b]) in DEMONSTRATION_KINDS)]  # fmt: skip
    if not scored:
        return
    batch = _rows(batch, scored)
    with torch.no_grad():
        seq = builder.build(first_steps(batch, k, target=True), hide_past_actions=hide)
        losses = objective(model, seq.to(next(model.parameters()).device))
    n = int(((seq.target_kind == TARGET_ACTION) & (seq.targets != IGNORE)).sum())
    tally.correct += float(losses["action_accuracy"]) * n
    tally.loss += float(losses["action"]) * n
    tally.tokens += n
    context = first_steps(batch, k, target=False)
    pred = predict_action_chunk(model, builder, context, temperature=0.0, estimate=estimate,
                                hide_past_actions=hide)  # (B, s, Da)  # fmt: skip
    truth = batch["actions"][:, k - 1]  # (B, s, Da): the chunk after the last observation
    for b, emb in enumerate(batch["embodiment"]):
        dims = int(batch["action_mask"][b].sum())
        t = truth[b, :, :dims]
        errors = {"model": (pred[b, :, :dims] - t).pow(2)}
        errors["train_mean"] = (torch.from_numpy(means[emb][:dims]) - t).pow(2) if emb in means else None
        errors["repeat_last"] = (batch["actions"][b, k - 2, -1, :dims] - t).pow(2) if k >= 2 else None
        tally.add(emb, errors)


def _rows(batch: dict, rows: list[int]) -> dict:
    """The collated batch's samples `rows` (tensors indexed, lists picked)."""
    index = torch.tensor(rows)
    return {key: v[index] if isinstance(v, Tensor) else [v[i] for i in rows] for key, v in batch.items()}


def _score_frames(model: RobofmModel, builder: SequenceBuilder, diffusion: FrameDiffusion, batch: dict,
                  horizons: list[int], cfg: EvalConfig, index: int, tally: FrameTally) -> None:  # fmt: skip
    k, h_max = builder.cfg.window_len, max(horizons)
    context = first_steps(batch, k, target=False)
    future = batch["actions"][:, k - 1 : k - 1 + h_max]  # (B, H, s, Da): the chunks after each context frame
    truth = batch["frames"][:, :, k : k + h_max].transpose(1, 2)  # (B, H, C, h, w, 3)
    last = batch["frames"][:, :, k - 1]  # (B, C, h, w, 3)
    valid = batch["camera_mask"]  # (B, C)
    for steps in cfg.sampler_settings():
        for name, chunks in (("model", future), ("shuffled_actions", future.roll(1, dims=0))):
            # one seed for both methods at each setting: they differ only in the actions
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
            patches = imagine(model, builder, diffusion, context, chunks, sampler_steps=steps, generator=generator)
            imagined = builder.image.to_uint8(builder.image.decode(patches, builder.frame_shape))  # (B, H, C, h, w, 3)
            for h in horizons:
                tally.add((h, name, steps), imagined[:, h - 1], truth[:, h - 1], valid)
    for h in horizons:
        tally.add((h, "copy_last"), last, truth[:, h - 1], valid)


class _progress:
    """A context manager giving an advance() callable: a rich progress bar on stderr, or nothing."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total, self.bar = show, total, None

    def __enter__(self):
        if not self.show:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True))  # fmt: skip
        self.bar.start()
        task = self.bar.add_task("eval", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
