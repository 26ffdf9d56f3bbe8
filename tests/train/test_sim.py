"""robofm-eval-sim: a short closed-loop MetaWorld rollout of a debug policy with the demo's cameras and state,
run when the sim extra is installed and MuJoCo can render off screen (skipped otherwise, saying what to install);
the success interval; and clear errors, also where no headless GL works."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

import robofm.sim.metaworld  # noqa: F401  (chooses the headless GL backend before anything imports mujoco)
from robofm.eval.sim import main, wilson
from robofm.sim import gl
from tests.models.conftest import make_store
from tests.train.conftest import TINY, require_sim_extra, train_in_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_headless_gl(monkeypatch):
    """Every MUJOCO_GL backend fails its probe, as on a machine without libOSMesa or a working EGL."""
    require_sim_extra()
    monkeypatch.setattr(gl, "_verdicts", {})
    monkeypatch.setattr(gl, "_probe", lambda backend: "simulated: no such library")


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


def test_a_short_simulated_episode_runs_and_is_recorded(headless_gl, sawyer_policy, tmp_path, capsys):
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
    assert "succeeded on held-out layouts, success rate" in capsys.readouterr().out  # the policy records its store


def test_bad_task_or_cameras_exit_2(headless_gl, sawyer_policy, tiny_store, tmp_path, capsys):
    assert main([f"policy={sawyer_policy}", "task=fly-v3", "episodes=1", f"out={tmp_path}"]) == 2
    assert "is not a MetaWorld v3 task" in " ".join(capsys.readouterr().err.split())
    other = tmp_path / "other"
    train_in_process(other, TINY + [f"data.path={tiny_store}", "trainer.max_steps=1"])  # cameras front, wrist
    assert main([f"policy={other}", "task=reach-v3", "episodes=1", f"out={tmp_path}"]) == 2
    assert "are not MetaWorld cameras" in " ".join(capsys.readouterr().err.split())


def test_without_headless_gl_eval_sim_exits_2_naming_the_package(no_headless_gl, tmp_path, capsys):
    assert main([f"policy={tmp_path / 'not-loaded'}", "task=reach-v3"]) == 2  # checked before the policy is loaded
    err = " ".join(capsys.readouterr().err.split())
    assert "robofm-eval-sim: error:" in err and "libosmesa6" in err and "apt-get install -y libosmesa6" in err
    assert "Traceback" not in err


def test_without_headless_gl_collect_metaworld_exits_2_naming_the_package(no_headless_gl, tmp_path, capsys):
    with mock.patch.dict(os.environ):  # the script sets HF_* variables at import
        script = runpy.run_path(str(ROOT / "scripts" / "collect_metaworld.py"), run_name="collect_metaworld")
        assert script["main"](["--out", str(tmp_path / "dataset"), "--tasks", "reach-v3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("collect_metaworld: error:") and "apt-get install -y libosmesa6" in err
    assert not (tmp_path / "dataset").exists()


def test_a_mujoco_gl_that_cannot_render_exits_2_without_a_traceback(tmp_path):
    require_sim_extra()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYOPENGL_PLATFORM")}
    env["MUJOCO_GL"] = "glfw"  # needs a display, which a headless machine has not: the user's choice is checked
    argv = [sys.executable, "-m", "robofm.eval.sim", f"policy={tmp_path}", "task=reach-v3"]  # this checkout's robofm
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in err
    assert "MUJOCO_GL=glfw cannot render here" in err and "apt-get install -y libosmesa6" in err


def test_a_task_outside_mt10_is_collected_with_its_layouts_and_evaluated_on_others(headless_gl, sawyer_policy,
                                                                                  tmp_path):  # fmt: skip
    """button-press-v3 (not an MT10 task) end to end: the collector records each episode's MT1 layout, the store
    keeps it, and robofm-eval-sim given that store runs on the layouts the demonstrations did not use."""
    from robofm.data.convert import main as convert

    with mock.patch.dict(os.environ):  # the script sets HF_* variables at import
        script = runpy.run_path(str(ROOT / "scripts" / "collect_metaworld.py"), run_name="collect_metaworld")
        assert script["main"](["--out", str(tmp_path / "lerobot"), "--tasks", "button-press-v3", "--resolution", "32",
                               "--episodes-per-task", "2", "--max-frames", "60"]) == 0  # fmt: skip
    assert convert(["lerobot", str(tmp_path / "lerobot"), "--out", str(tmp_path / "store")]) == 0
    rows = json.loads((tmp_path / "store" / "manifest.json").read_text())["episodes"]
    assert [r["task"] for r in rows] == ["press the button from the front"] * 2
    used = [(r["layout"]["mt1_seed"], r["layout"]["mt1_index"]) for r in rows]
    assert len(set(used)) == 2 and all(seed == 0 for seed, _ in used)
    out = tmp_path / "sim"
    assert main([f"policy={sawyer_policy}", "task=button-press-v3", "episodes=3", "max_steps=2", "videos=0",
                 "render_size=32", f"train_store={tmp_path / 'store'}", f"out={out}"]) == 0  # fmt: skip
    result = json.loads((out / "results.json").read_text())
    ran = [(r["layout"]["mt1_seed"], r["layout"]["mt1_index"]) for r in result["rollouts"]]
    assert result["skipped_layouts"] == 2 and len(ran) == 3 and not set(ran) & set(used)
    assert ran == sorted(ran) and ran[0] == (0, 0 if (0, 0) not in used else min({0, 1, 2, 3, 4} - {i for _, i in used}))


def test_held_out_layouts_skip_what_training_used_and_go_on_to_the_next_seed(headless_gl):
    from robofm.eval.sim import held_out_layouts

    chosen, skipped = held_out_layouts("reach-v3", 0, 3, {(0, 0), (0, 2)})
    assert [ident for ident, _ in chosen] == [(0, 1), (0, 3), (0, 4)] and skipped == 2
    chosen, skipped = held_out_layouts("reach-v3", 0, 2, {(0, i) for i in range(50)})
    assert [ident for ident, _ in chosen] == [(1, 0), (1, 1)] and skipped == 50


def test_training_stores_without_layouts_or_not_on_disk_are_refused(tmp_path):
    from robofm.errors import UsageError
    from robofm.eval.sim import train_stores, used_layouts

    store = make_store(tmp_path / "store", n=2, length=8, task="reach the goal position")
    with pytest.raises(UsageError, match="2 episode\\(s\\) of 'reach the goal position'.*carry no layout record"):
        used_layouts([str(store)], "reach the goal position")
    assert used_layouts([str(store)], "open the door") == set()  # the store holds no episode of this task
    with pytest.raises(UsageError, match="not on disk here"):
        train_stores(("auto",), [str(tmp_path / "gone")], "POLICY")
    assert train_stores(("none",), [str(store)], "POLICY") == [] and train_stores(("auto",), [], "POLICY") is None
    assert train_stores(("auto",), [str(store)], "POLICY") == [str(store)]


def test_every_metaworld_task_has_a_distinct_instruction(headless_gl):
    from metaworld.policies import ENV_POLICY_MAP

    from robofm.sim.metaworld import INSTRUCTIONS, TASKS

    assert set(TASKS) == set(ENV_POLICY_MAP) and len(set(INSTRUCTIONS.values())) == len(TASKS) == 50
