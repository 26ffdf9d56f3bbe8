"""robofm-eval-sim: a short closed-loop MetaWorld rollout of a debug policy with the demo's cameras and state,
run when the sim extra is installed; the success interval; and clear errors."""

from __future__ import annotations

import json

import pytest

import robofm.sim.metaworld  # noqa: F401  (chooses the headless GL backend before anything imports mujoco)
from robofm.eval.sim import main, wilson
from tests.models.conftest import make_store
from tests.train.conftest import TINY, train_in_process


def test_wilson_interval_is_sound_at_the_edges():
    assert wilson(0, 10)[0] == 0.0 and 0.25 < wilson(0, 10)[1] < 0.35
    lo, hi = wilson(5, 10)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * (0.5 - lo))
    assert wilson(10, 10)[1] == 1.0


@pytest.fixture(scope="module")
def sawyer_policy(tmp_path_factory):
    """A debug policy trained a few steps on a tiny store shaped like the demo's: cameras corner2 and left,
    state and action of 4 dimensions."""
    root = tmp_path_factory.mktemp("sim")
    store = make_store(root / "store", n=3, length=16, cameras=("corner2", "left"), state_dim=4, action_dim=4,
                       embodiment="sawyer")  # fmt: skip
    train_in_process(root / "run", TINY + [f"data.path={store}", "trainer.max_steps=2"])
    return root / "run"


def test_a_short_simulated_episode_runs_and_is_recorded(sawyer_policy, tmp_path, capsys):
    pytest.importorskip("metaworld", reason="the sim extra (pip install 'robofm[sim]') is not installed")
    out = tmp_path / "sim"
    args = [f"policy={sawyer_policy}", "task=reach-v3", "episodes=2", "max_steps=6", "videos=1", "render_size=32",
            f"out={out}"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["episodes"] == 2 and len(result["rollouts"]) == 2 and result["instruction"] == "reach the goal position"
    assert all(1 <= r["steps"] <= 6 for r in result["rollouts"])
    lo, hi = result["ci95"]
    assert lo <= result["success_rate"] <= hi
    assert (out / "episode_000.mp4").is_file() and result["rollouts"][1]["video"] is None
    assert "succeeded, success rate" in capsys.readouterr().out


def test_bad_task_or_cameras_exit_2(sawyer_policy, tiny_store, tmp_path, capsys):
    pytest.importorskip("metaworld", reason="the sim extra is not installed")
    assert main([f"policy={sawyer_policy}", "task=fly-v3", "episodes=1", f"out={tmp_path}"]) == 2
    assert "is not a MetaWorld v3 task" in " ".join(capsys.readouterr().err.split())
    other = tmp_path / "other"
    train_in_process(other, TINY + [f"data.path={tiny_store}", "trainer.max_steps=1"])  # cameras front, wrist
    assert main([f"policy={other}", "task=reach-v3", "episodes=1", f"out={tmp_path}"]) == 2
    assert "are not MetaWorld cameras" in " ".join(capsys.readouterr().err.split())
