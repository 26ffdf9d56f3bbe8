"""The VLA policy of an export: raw observations in, actions in robot units out.

    policy = robofm.load_policy("outputs/finetune/run")        # an export or run folder
    policy.reset()
    action = policy.select_action({"images": {"corner2": img, "left": img2}, "state": state, "task": "open the door"})

The model was trained on observations `stride` control steps apart with the `stride` actions between them as
one chunk. The policy keeps that spacing: it predicts a chunk from the last `window_len` observations taken
`stride` steps apart, ending now (fewer at the start of an episode), with the actions executed between them, and
plays the first `execute` actions of it (all `stride` by default) before it predicts again. With `ensemble=m` it
instead predicts a chunk at every step and averages every prediction for the current step with weights
exp(-m * age) (ACT's temporal ensembling). `hide_past_actions` predicts without the executed actions in view (the
copycat answer; None: as the model was trained). `estimate="mean"` reads each chunk as the expectation of its
slots' distributions (see predict_action_chunk). The embodiment defaults to the one the model was trained or
fine-tuned on (the export's trained_on.json); name it where the data held several.
"""

from __future__ import annotations

import copy
from collections import deque
from pathlib import Path

import numpy as np
import torch

from robofm.data.episode import resize_frames
from robofm.errors import UsageError
from robofm.models.pretrained import from_pretrained
from robofm.models.sampling import predict_action_chunk


class Policy:
    def __init__(self, path: str | Path, *, embodiment: str | None = None, temperature: float = 0.0,
                 ensemble: float | None = None, seed: int = 0, device: str = "cpu", estimate: str = "mean",
                 execute: int | None = None, hide_past_actions: bool | None = None) -> None:  # fmt: skip
        pre = from_pretrained(path, device)
        self.model, self.builder = pre.model, pre.builder
        self.trained_stores = pre.stores  # every store that trained it (robofm-eval-sim holds out their layouts)
        self.trained_stores_known = pre.stores_known
        names = self.builder.embodiments
        trained = pre.trained_on.get("embodiments") or names  # a fine-tuned export: the data it was fine-tuned on
        if embodiment is None and len(trained) > 1:
            raise UsageError(f"{path} was trained on several embodiments {trained}: pass embodiment=...")
        self.embodiment = embodiment or trained[0]
        if self.embodiment not in names:
            raise UsageError(f"{path} knows embodiments {names}, not {self.embodiment!r}")
        self.state_dim = self.builder.state_norm.dims(self.embodiment)
        self.action_dim = self.builder.action_norm.dims(self.embodiment)
        self.temperature, self.ensemble, self.seed, self.estimate = temperature, ensemble, seed, estimate
        self.k, self.stride = self.builder.cfg.window_len, self.builder.cfg.stride
        self.execute = self.stride if execute is None else execute
        if not 1 <= self.execute <= self.stride:
            raise UsageError(f"execute={execute}: a chunk holds {self.stride} actions, execute 1 to {self.stride}")
        self.hide_past_actions = hide_past_actions
        self.reset()

    def reset(self) -> None:
        """Start an episode: no history, an empty action queue, the random generator re-seeded."""
        span = (self.k - 1) * self.stride + 1
        self.frames: deque[np.ndarray] = deque(maxlen=span)  # [C, H, W, 3] per control step
        self.states: deque[np.ndarray] = deque(maxlen=span)
        self.executed: deque[np.ndarray] = deque(maxlen=span - 1)  # the action sent at each step (the last frame's is next)
        self.queue: deque[np.ndarray] = deque()
        self.predictions: deque[tuple[int, np.ndarray]] = deque()  # (step it was made, chunk) for ensembling
        self.t = 0
        self.generator = torch.Generator().manual_seed(self.seed)

    def fork(self) -> Policy:
        """A policy with this one's model, builder and settings (shared, not copied) and an episode state of its
        own, freshly reset: what robofm-serve gives each connection. Its actions are those of a new load_policy
        with the same settings; the two may not run inference at the same time (the model is shared)."""
        forked = copy.copy(self)
        forked.reset()
        return forked

    # ------------------------------------------------------------------------------------------------ acting

    def select_action(self, observation: dict) -> np.ndarray:
        """The action [action_dim] (robot units) to execute now."""
        frames, state, task = self._check(observation)
        self.frames.append(frames)
        self.states.append(state)
        if self.ensemble is None:
            if not self.queue:
                self.queue.extend(self._predict(task)[: self.execute])
            action = self.queue.popleft()
        else:
            self.predictions.append((self.t, self._predict(task)))
            while self.predictions and self.t - self.predictions[0][0] >= self.stride:
                self.predictions.popleft()
            ages = np.array([self.t - t0 for t0, _ in self.predictions], dtype=np.float64)
            acts = np.stack([chunk[self.t - t0] for t0, chunk in self.predictions])
            w = np.exp(-self.ensemble * ages)
            action = (w[:, None] * acts).sum(0) / w.sum()
        self.executed.append(action)
        self.t += 1
        return action.astype(np.float32)

    def predict_chunk(self, observation: dict) -> np.ndarray:
        """The chunk [stride, action_dim] (robot units) predicted from the history and this observation, as
        select_action would predict it now; the history, queue and random generator are left as they were."""
        frames, state, task = self._check(observation)
        kept, rng = (self.frames.copy(), self.states.copy()), self.generator.get_state()
        self.frames.append(frames)
        self.states.append(state)
        try:
            return self._predict(task).astype(np.float32)
        finally:
            self.frames, self.states = kept
            self.generator.set_state(rng)

    @torch.no_grad()
    def _predict(self, task: str) -> np.ndarray:
        """A chunk [stride, action_dim] from the observations stride steps apart ending now."""
        n = len(self.frames)
        steps = list(range(n - 1, -1, -self.stride))[: self.k][::-1]  # indices into the history, oldest first
        chunks = []
        for a, b in zip(steps[:-1], steps[1:], strict=True):  # the actions executed between two observations
            chunks.append(np.stack([self.executed[i] for i in range(a, b)]))
        pad = np.zeros((self.stride, self.action_dim), np.float32)
        actions = np.stack([*chunks, pad])  # the last chunk is the one to predict
        frames = np.stack([self.frames[i] for i in steps], axis=1)  # (C, K, H, W, 3)
        batch = {
            "frames": torch.from_numpy(frames)[None], "state": torch.from_numpy(np.stack([self.states[i] for i in steps]))[None],
            "state_mask": torch.ones(1, self.state_dim, dtype=torch.bool),
            "actions": torch.from_numpy(actions.astype(np.float32))[None],
            "action_mask": torch.ones(1, self.action_dim, dtype=torch.bool),
            "camera_mask": torch.ones(1, len(self.builder.cameras), dtype=torch.bool),
            "task": [task], "embodiment": [self.embodiment],
        }  # fmt: skip
        chunk = predict_action_chunk(self.model, self.builder, batch, temperature=self.temperature,
                                     generator=self.generator, estimate=self.estimate,
                                     hide_past_actions=self.hide_past_actions)  # fmt: skip
        return chunk[0, :, : self.action_dim].numpy()

    def _check(self, obs: dict) -> tuple[np.ndarray, np.ndarray, str]:
        """(frames [C, H, W, 3] at the model's size, state [Ds], task) or a UsageError naming what was expected."""
        want = f'{{"images": {{{", ".join(repr(c) for c in self.builder.cameras)}: HxWx3 uint8}}, "state": ' \
               f'[{self.state_dim}] float, "task": str}}'  # fmt: skip
        if not isinstance(obs, dict) or not {"images", "state", "task"} <= obs.keys():
            got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise UsageError(f"observation must be {want}; got {got}")
        images = obs["images"]
        if not isinstance(images, dict):
            raise UsageError(f"observation images must be a dict of camera name to image; expected {want}")
        missing = [c for c in self.builder.cameras if c not in images]
        if missing:
            raise UsageError(f"observation images lack camera(s) {missing}; expected {want}")
        h, w = self.builder.frame_shape[:2]
        frames = []
        for cam in self.builder.cameras:
            img = np.asarray(images[cam])
            if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
                raise UsageError(f"images[{cam!r}] must be HxWx3 uint8, got {img.dtype} {tuple(img.shape)}")
            frames.append(resize_frames(img[None], (h, w))[0])
        state = np.asarray(obs["state"], dtype=np.float32).reshape(-1)
        if state.shape != (self.state_dim,) or not np.isfinite(state).all():
            raise UsageError(f"state must be {self.state_dim} finite numbers for embodiment {self.embodiment!r}, "
                             f"got shape {np.shape(obs['state'])}")  # fmt: skip
        padded = np.zeros(self.builder.state_dim, np.float32)
        padded[: self.state_dim] = state
        return np.stack(frames), padded, str(obs["task"])


def load_policy(path: str | Path, **kwargs) -> Policy:
    """The policy of an export or run folder (keyword arguments: see Policy)."""
    return Policy(path, **kwargs)
