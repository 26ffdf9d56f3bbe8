"""The loss-spike guard: decide, before the optimizer step, whether a step is safe to take."""

from __future__ import annotations

import math
from collections import deque

from robofm.train.config import GuardConfig


class SpikeGuard:
    """check(step, loss, grad_norm) -> "ok" | "skip" | "rollback".

    A step is skipped when its loss or gradient norm is non-finite, or (after `warmup` good steps) more than
    k_sigma standard deviations above the mean of the last `window` good steps. The max_skips-th skip within
    `window` steps asks for a rollback. Every non-ok decision is recorded in `events` with its values."""

    def __init__(self, cfg: GuardConfig) -> None:
        self.cfg = cfg
        self.losses: deque[float] = deque(maxlen=cfg.window)
        self.norms: deque[float] = deque(maxlen=cfg.window)
        self.skips: deque[int] = deque()
        self.events: list[dict] = []

    def _spike(self, value: float, history: deque[float]) -> str | None:
        if not math.isfinite(value):
            return "non-finite"
        if len(history) < max(self.cfg.warmup, 1):  # no window to judge against yet
            return None
        mean = sum(history) / len(history)
        std = math.sqrt(sum((x - mean) ** 2 for x in history) / len(history))
        limit = mean + self.cfg.k_sigma * max(std, 1e-3 * abs(mean), 1e-8)
        return f"above {limit:.4g} (mean {mean:.4g} + {self.cfg.k_sigma} sigma)" if value > limit else None

    def check(self, step: int, loss: float, grad_norm: float) -> str:
        if not self.cfg.enabled:
            return "ok"
        why = {name: r for name, v, h in (("loss", loss, self.losses), ("grad_norm", grad_norm, self.norms))
               if (r := self._spike(v, h))}  # fmt: skip
        if not why:
            self.losses.append(loss)
            self.norms.append(grad_norm)
            return "ok"
        while self.skips and self.skips[0] <= step - self.cfg.window:
            self.skips.popleft()
        self.skips.append(step)
        action = "rollback" if len(self.skips) >= self.cfg.max_skips else "skip"
        self.events.append({"step": step, "action": action, "loss": loss, "grad_norm": grad_norm, "why": why})
        if action == "rollback":
            self.skips.clear()
        return action

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "norms": list(self.norms), "skips": list(self.skips)}

    def load_state_dict(self, state: dict) -> None:
        """Replace the history (a rollback loads an older one over the current)."""
        self.losses = deque(state["losses"], maxlen=self.cfg.window)
        self.norms = deque(state["norms"], maxlen=self.cfg.window)
        self.skips = deque(state["skips"])
