"""Run visibility: a progress bar, metrics.jsonl, TensorBoard event files and, when enabled, wandb."""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger(__name__)


class MetricsLogger:
    """Only the main process logs; the others get a logger that does nothing."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True, wandb: bool = False,
                 config: dict | None = None) -> None:  # fmt: skip
        self.enabled, self.run_dir = enabled, Path(run_dir)
        self.tb = self.wandb = None
        self._jsonl = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 -- open for the run's lifetime
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wb
            except ImportError:
                log.warning("trainer.wandb=true but wandb is not installed (pip install wandb): not logging to wandb")
            else:
                self.wandb = wb.init(project="robofm", dir=str(self.run_dir), config=config)

    def _write(self, record: dict) -> None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        self._jsonl.write(json.dumps(clean) + "\n")
        self._jsonl.flush()

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self._write(metrics)
        step = metrics.get("step", 0)
        for k, v in metrics.items():
            if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                if self.tb:
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def event(self, event: dict) -> None:
        """A guard decision or a rollback: logged as a warning and kept in metrics.jsonl, but not plotted (the loss
        of a skipped step is not the run's loss)."""
        if self.enabled:
            log.warning("step %s: %s", event.get("step"), {k: v for k, v in event.items() if k != "step"})
            self._write({"event": event.get("action", event.get("event")), **event})

    @contextmanager
    def progress(self, total: int, done: int):
        """A bar with step, loss terms, tokens/s and ETA; update(metrics) after each step."""
        bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not self.enabled)  # fmt: skip
        with bar:
            task = bar.add_task("train", total=total, completed=done, info="")

            class Handle:
                @staticmethod
                def update(m: dict) -> None:
                    info = (f"loss {m['total']:.3f} (action {m['action']:.3f} frame {m['frame']:.3f}) "
                            f"{m['tokens_per_s']:,.0f} tok/s")  # fmt: skip
                    bar.update(task, completed=m["step"], info=info)

            yield Handle()

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
