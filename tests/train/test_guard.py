"""The loss-spike guard: non-finite and far-above-the-window steps are skipped and logged, and too many skips roll
back to the last checkpoint with the offending batches set aside."""

from __future__ import annotations

import math

import pytest
import torch

from robofm.objectives.objective import Objective
from robofm.train.config import GuardConfig
from robofm.train.guard import SpikeGuard
from robofm.train.loop import Trainer
from tests.train.conftest import TINY, final_weights, read_metrics, step_losses, train_in_process

# ------------------------------------------------------------------------------------------------ SpikeGuard


def _warm(guard: SpikeGuard, n: int, start: int = 0) -> None:
    for i in range(n):
        assert guard.check(start + i, 2.0 + 0.01 * (i % 3), 1.0 + 0.01 * (i % 2)) == "ok"


def test_non_finite_loss_or_grad_norm_is_skipped_from_the_first_step():
    guard = SpikeGuard(GuardConfig(warmup=5, max_skips=10))
    assert guard.check(0, math.nan, 1.0) == "skip"
    assert guard.check(0, 1.0, math.inf) == "skip"
    assert [e["why"] for e in guard.events] == [{"loss": "non-finite"}, {"grad_norm": "non-finite"}]
    assert guard.events[0]["step"] == 0 and math.isnan(guard.events[0]["loss"])
    assert not guard.losses  # a skipped step never enters the history


def test_a_spike_is_judged_against_the_window_after_warmup():
    guard = SpikeGuard(GuardConfig(window=10, warmup=5, k_sigma=6.0, max_skips=10))
    assert guard.check(0, 1e6, 1e6) == "ok"  # no history yet: nothing to compare against
    guard = SpikeGuard(GuardConfig(window=10, warmup=5, k_sigma=6.0, max_skips=10))
    _warm(guard, 5)
    assert guard.check(5, 2.05, 1.0) == "ok"  # within k sigma
    assert guard.check(6, 50.0, 1.0) == "skip"
    assert guard.check(6, 2.0, 40.0) == "skip"
    assert list(guard.events[0]["why"]) == ["loss"] and list(guard.events[1]["why"]) == ["grad_norm"]
    assert max(guard.losses) < 3  # spikes stay out of the window


def test_max_skips_within_the_window_ask_for_a_rollback():
    guard = SpikeGuard(GuardConfig(window=10, warmup=0, max_skips=3))
    assert [guard.check(s, math.nan, 1.0) for s in (3, 4)] == ["skip", "skip"]
    assert guard.check(20, math.nan, 1.0) == "skip"  # steps 3 and 4 are out of the window by now
    assert [guard.check(s, math.nan, 1.0) for s in (21, 22)] == ["skip", "rollback"]
    assert guard.events[-1]["action"] == "rollback" and not guard.skips  # counting starts afresh
    assert guard.check(23, math.nan, 1.0) == "skip"


def test_a_disabled_guard_lets_everything_through():
    guard = SpikeGuard(GuardConfig(enabled=False))
    assert guard.check(0, math.nan, math.nan) == "ok" and not guard.events


def test_state_round_trip_replaces_the_history():
    cfg = GuardConfig(window=4, warmup=2, max_skips=5)
    saved = SpikeGuard(cfg)
    _warm(saved, 3)
    saved.check(3, math.nan, 1.0)
    state = saved.state_dict()
    later = SpikeGuard(cfg)
    _warm(later, 4, start=10)  # a rollback loads the older history over a newer one
    later.check(14, math.nan, 1.0)
    later.load_state_dict(state)
    assert later.state_dict() == state


# ------------------------------------------------------------------------------------------------ in training


@pytest.fixture
def poison(monkeypatch):
    """poison({(epoch, batch): factor}) multiplies the training loss of those batches by factor (nan: a NaN loss
    and NaN gradients; 1e6: a huge loss and gradient norm); returns the list of (epoch, batch) drawn, in order."""
    drawn: list[tuple[int, int]] = []
    batches, objective = Trainer.batches, Objective.__call__

    def install(factors: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
        def recording_batches(self):
            for where, seq in batches(self):
                drawn.append(where)
                yield where, seq

        def poisoned(self, model, seq, generator=None):
            out = objective(self, model, seq, generator)
            factor = factors.get(drawn[-1]) if model.training else None
            return out if factor is None else {**out, "total": out["total"] * factor}

        monkeypatch.setattr(Trainer, "batches", recording_batches)
        monkeypatch.setattr(Objective, "__call__", poisoned)
        return drawn

    return install


def _events(run_dir, kind: str) -> list[dict]:
    return [m for m in read_metrics(run_dir) if m.get("event") == kind]


GUARD = ["trainer.guard.window=20", "trainer.guard.warmup=4", "trainer.guard.k_sigma=6"]


def test_a_nan_batch_and_a_huge_loss_batch_are_skipped_and_logged(tmp_path, tiny_store, poison):
    drawn = poison({(0, 2): math.nan, (0, 7): 1e6})
    run = tmp_path / "run"
    trainer = train_in_process(run, TINY + GUARD + [f"data.path={tiny_store}", "trainer.max_steps=10",
                                                    "trainer.log_every=1", "trainer.guard.max_skips=3"])  # fmt: skip
    skips = _events(run, "guard")
    assert [(e["step"], e["action"], e["batch"]) for e in skips] == [(2, "skip", [0, 2]), (6, "skip", [0, 7])]
    assert skips[0]["loss"] == "nan" and skips[0]["why"]["loss"] == "non-finite"
    assert skips[1]["loss"] > 1e5 and skips[1]["why"]["loss"].startswith("above")
    assert not _events(run, "rollback")
    assert sorted(step_losses(run)) == list(range(1, 11))  # training went on: 10 steps from 12 batches
    assert drawn == [(0, i) for i in range(12)]
    assert all(math.isfinite(v) for v in step_losses(run).values())
    for name, w in {**trainer.model.state_dict(), **final_weights(run)}.items():
        assert torch.isfinite(w).all(), name


def test_too_many_skips_roll_back_and_set_the_batches_aside(tmp_path, tiny_store, poison):
    drawn = poison({(0, 6): math.nan, (0, 7): 1e6})
    run = tmp_path / "run"
    train_in_process(run, TINY + GUARD + [f"data.path={tiny_store}", "trainer.max_steps=10", "trainer.log_every=1",
                                          "trainer.checkpoint_every=5", "trainer.guard.max_skips=2"])  # fmt: skip
    assert [(e["step"], e["action"]) for e in _events(run, "guard")] == [(6, "skip"), (6, "rollback")]
    [rollback] = _events(run, "rollback")
    assert rollback["step"] == 5 and rollback["to"].endswith("step-00000005")
    assert rollback["skip_batches"] == [[0, 6], [0, 7]]
    # batches 0-7 up to the rollback, then from the checkpoint's position (batch 5) on, without 6 and 7
    assert drawn == [(0, i) for i in range(8)] + [(0, 5), *((0, i) for i in range(8, 12))]
    assert sorted(step_losses(run)) == list(range(1, 11))
    state = torch.load(run / "checkpoints" / "step-00000010" / "state.pt", weights_only=True)
    assert sorted(map(tuple, state["skip"])) == [(0, 6), (0, 7)]  # a resumed run keeps them aside too
    assert all(torch.isfinite(w).all() for w in final_weights(run).values())
