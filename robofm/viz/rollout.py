"""The computation behind `robofm-viz`: an imagined rollout beside the real episode, the policy's action chunks
along the episode, and the frame metrics (PSNR against the copy-last-frame baseline).

Time runs in model steps of `stride` frames. With window_len K and stride s, a rollout from frame `start` sees the
K context frames start, start+s, ..., start+(K-1)s and imagines the frames at start+(K-1+h)s for h = 1..H, under
the action chunk that leads to each; the chunks are the episode's own or edited ones ("what if").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from robofm.data.dataset import EpisodeWindowDataset
from robofm.data.store import EpisodeInfo, EpisodeStore
from robofm.errors import UsageError
from robofm.models.pretrained import Pretrained
from robofm.models.sampling import imagine, predict_action_chunk

log = logging.getLogger(__name__)

PSNR_CAP = 100.0  # dB for identical frames, so means and plots stay finite
POLICY_BATCH = 32  # windows per predict_action_chunk call along an episode


@dataclass
class EpisodeRollout:
    """One episode's window from `start`: K context steps then `horizon` future steps (uint8 frames [C, h, w, 3]
    per step), and the actions between them in robot units."""

    info: EpisodeInfo
    start: int
    horizon: int
    requested_horizon: int
    context: dict  # collated batch of 1 with K observation steps (the input to `imagine`)
    future_actions: torch.Tensor  # [1, H, s, Da] the episode's chunks after the last context frame
    real: np.ndarray  # uint8 [H, C, h, w, 3] the episode's frames at the H future steps
    last_context: np.ndarray  # uint8 [C, h, w, 3] the last frame the model saw (the copy-last-frame baseline)
    frame_index: np.ndarray  # int [H] the episode frame of each future step


def max_horizon(length: int, start: int, window_len: int, stride: int) -> int:
    """Future steps an episode of `length` frames holds after the context that begins at frame `start`."""
    return (length - 1 - start) // stride - (window_len - 1)


def open_episode(store: EpisodeStore, episode_id: str, builder, start: int, horizon: int) -> EpisodeRollout:
    """Read the context and the real future of `episode_id` from frame `start`; the horizon is capped by the
    episode's length (logged). UsageError for an unknown episode or one too short for a single imagined step."""
    info = store.info(episode_id)
    k, s = builder.cfg.window_len, builder.cfg.stride
    if start < 0 or horizon < 1:
        raise UsageError(f"start must be >= 0 and horizon >= 1, got start={start} horizon={horizon}")
    if not info.has_action:
        raise UsageError(f"episode {episode_id} has no actions: there is nothing to roll out under")
    available = max_horizon(info.length, start, k, s)
    if available < 1:
        need = start + k * s + 1
        raise UsageError(f"episode {episode_id} has {info.length} frames; a rollout from frame {start} needs at "
                         f"least {need} ({k} context steps and 1 imagined step at stride {s})")  # fmt: skip
    if horizon > available:
        log.warning("horizon %d capped to %d: episode %s has %d frames", horizon, available, episode_id, info.length)
    h = min(horizon, available)
    ds = _dataset(store, builder, k - 1 + h)
    item = default_collate([ds.read_window(0, info, start)])
    key = builder.image.input_key
    context = {**item, "frames": item["frames"][:, :, :k], "state": item["state"][:, :k],
               "actions": item["actions"][:, :k]}  # fmt: skip
    if key != "frames":
        context[key] = item[key][:, :, :k]
    real = item["frames"][0, :, k:].permute(1, 0, 2, 3, 4).numpy()  # (H, C, h, w, 3)
    return EpisodeRollout(info, start, h, horizon, context, item["actions"][:, k - 1 :], real,
                          item["frames"][0, :, k - 1].numpy(), item["frame_index"][0, k:].numpy())  # fmt: skip


def _dataset(store: EpisodeStore, builder, window_len: int) -> EpisodeWindowDataset:
    """A reader of one episode's windows (the caller checked its length; other episodes' lengths don't matter)."""
    return EpisodeWindowDataset(store.root, window_len, builder.cfg.stride, split=None, cameras=builder.cameras,
                                latents=builder.image.input_key == "latents", warn_short=False)  # fmt: skip


def imagine_frames(pretrained: Pretrained, rollout: EpisodeRollout, actions: torch.Tensor,
                   sampler_steps: int, seed: int) -> np.ndarray:  # fmt: skip
    """uint8 frames [H, C, h, w, 3] the model imagines from the rollout's context under chunks [1, H, s, Da]."""
    builder = pretrained.builder
    patches = imagine(pretrained.model, builder, pretrained.diffusion, rollout.context, actions,
                      sampler_steps=sampler_steps, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    frames = builder.image.to_uint8(builder.image.decode(patches, builder.frame_shape))  # (1, H, C, h, w, 3)
    return frames[0].numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB of uint8 images [..., h, w, 3] over their last three axes (capped at PSNR_CAP)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(255.0**2 / mse), PSNR_CAP)


WHAT_IF_KINDS = "shuffled, zero, reversed, scale:F or file:PATH.npy"


def what_if_specs(text: str | None) -> list[str]:
    """The what-if specs of a comma-separated list (None or "none": no what-if), each checked by edit_actions's
    rules before anything slow runs."""
    if text is None or text.strip() == "none":
        return []
    specs = [spec.strip() for spec in text.split(",")]
    if "" in specs or len(set(specs)) < len(specs):
        raise UsageError(f"what_if must list distinct specs ({WHAT_IF_KINDS}) separated by commas, got {text!r}")
    return specs


def edit_actions(spec: str, actions: torch.Tensor, action_mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The rollout's chunks [1, H, s, Da] edited by a what-if spec:
    - `shuffled`: the same H*s action steps in a random order (seeded): the right actions at the wrong times;
    - `zero`: every action 0 (a still arm, where actions are velocities or deltas);
    - `reversed`: the H*s action steps played backwards in time;
    - `scale:F`: every action times F (scale:-1 commands the opposite motion where actions are deltas);
    - `file:PATH.npy`: an array [H, s, Da] or [H*s, Da], Da the episode's action dimensions (more chunks than H are
      cut off)."""
    _, h, s, da = actions.shape
    steps = actions.reshape(1, h * s, da)
    if spec == "zero":
        return torch.zeros_like(actions)
    if spec == "reversed":
        return steps.flip(1).reshape(actions.shape)
    if spec == "shuffled":
        order = torch.randperm(h * s, generator=torch.Generator().manual_seed(seed))
        return steps[:, order].reshape(actions.shape)
    kind, _, arg = spec.partition(":")
    if kind == "scale":
        try:
            return actions * float(arg)
        except ValueError:
            raise UsageError(f"what_if=scale:F needs a number F, got {spec!r}") from None
    if kind == "file":
        return _actions_from_file(Path(arg), h, s, da, int(action_mask.sum()))
    raise UsageError(f"what_if specs are {WHAT_IF_KINDS}, got {spec!r}")


def _actions_from_file(path: Path, h: int, s: int, da: int, used: int) -> torch.Tensor:
    try:
        x = np.load(path)
    except (OSError, ValueError) as e:
        raise UsageError(f"what_if file {path} cannot be read as a .npy array: {e}") from None
    if x.ndim == 2 and x.shape[0] % s == 0:
        x = x.reshape(x.shape[0] // s, s, x.shape[1])
    if x.ndim != 3 or x.shape[1] != s or x.shape[2] not in (used, da) or x.shape[0] < h:
        raise UsageError(f"what_if file {path} holds an array of shape {x.shape}; expected [{h}, {s}, {used}] or "
                         f"[{h * s}, {used}] (horizon {h}, stride {s}, {used} action dimensions)")  # fmt: skip
    out = torch.zeros(1, h, s, da)
    out[0, :, :, : x.shape[2]] = torch.as_tensor(x[:h], dtype=torch.float32)
    return out


@dataclass
class ActionTrace:
    """The policy's greedy chunks along an episode beside the episode's actions, in robot units, over the
    action dimensions the episode has."""

    true: np.ndarray  # [T, D] every frame's action
    predicted: np.ndarray  # [T', D] the predicted actions of frames first .. first+T'-1
    first: int  # the frame of predicted[0]: (K-1)*s, the first action that follows a full context

    stride: int
    store_mean: np.ndarray  # [D] the store's mean action of the episode's embodiment

    def _target(self) -> np.ndarray:
        return self.true[self.first : self.first + len(self.predicted)]

    def mse(self) -> np.ndarray:
        """Mean squared error per dimension [D] over the predicted frames."""
        return ((self.predicted - self._target()) ** 2).mean(axis=0)

    def baseline_mse(self) -> dict[str, np.ndarray]:
        """MSE per dimension [D] of two baselines on the same frames: the store's mean action, and repeating the
        last action before each chunk (the first action itself where no action precedes it)."""
        chunk_starts = self.first + np.arange(len(self.predicted)) // self.stride * self.stride
        last = self.true[np.maximum(chunk_starts - 1, 0)]
        return {"mean action": ((self.store_mean - self._target()) ** 2).mean(axis=0),
                "repeat last action": ((last - self._target()) ** 2).mean(axis=0)}  # fmt: skip


def trace_actions(pretrained: Pretrained, store: EpisodeStore, info: EpisodeInfo) -> ActionTrace:
    """Slide the policy along the episode at its stride: each window of K steps predicts (greedy) the chunk after
    it; consecutive windows' chunks tile the episode from frame (K-1)*s on."""
    builder = pretrained.builder
    k, s = builder.cfg.window_len, builder.cfg.stride
    ds = _dataset(store, builder, k)
    starts = list(range(0, info.length - k * s, s))
    chunks = []
    for i in range(0, len(starts), POLICY_BATCH):
        batch = default_collate([ds.read_window(0, info, f) for f in starts[i : i + POLICY_BATCH]])
        batch = {**batch, "frames": batch["frames"][:, :, :k]}
        if "latents" in batch:
            batch["latents"] = batch["latents"][:, :, :k]
        chunks.append(predict_action_chunk(pretrained.model, builder, batch))  # (B, s, Da)
    true = np.asarray(store.arrays(info.id).action[:], dtype=np.float32)  # (T, D)
    predicted = torch.cat(chunks).reshape(-1, builder.action_dim).numpy()[:, : true.shape[1]]  # (T', D): unpadded
    mean = np.asarray(store.stats[info.embodiment]["action"]["mean"], dtype=np.float32)
    return ActionTrace(true, predicted, (k - 1) * s, s, mean)
