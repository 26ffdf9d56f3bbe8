"""scripts/collect_metaworld.py: the episode kinds a corpus mixes, the held-out tasks it never collects, and a
dataset that does not depend on how many worker processes made it."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest

import robofm.sim.metaworld  # noqa: F401  (chooses the headless GL backend before anything imports mujoco)
from tests.train.conftest import require_sim_extra

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script() -> dict:
    require_sim_extra()
    with mock.patch.dict(os.environ):  # the script sets HF_* variables at import
        return runpy.run_path(str(ROOT / "scripts" / "collect_metaworld.py"), run_name="collect_metaworld")


def test_the_mix_gives_each_kind_its_share_spread_over_the_episodes(script):
    mix = script["parse_mix"]("expert=2,dart=1,explore=1")
    assert mix == {"expert": 0.5, "dart": 0.25, "explore": 0.25}
    kinds = script["kind_schedule"](mix, 8)
    assert sorted(kinds) == sorted(["expert"] * 4 + ["dart"] * 2 + ["explore"] * 2)
    assert kinds[:4].count("expert") == 2  # spread out, not in blocks
    assert script["kind_schedule"]({"expert": 1 / 3, "dart": 1 / 3, "explore": 1 / 3}, 4).count("expert") == 2
    for bad in ("expert=1,walk=1", "expert", "expert=0"):
        with pytest.raises(ValueError):
            script["parse_mix"](bad)


@pytest.mark.parametrize("tasks", ["box-close-v3", "reach-v3,door-lock-v3", "all", "ml45-test"])
def test_the_held_out_tasks_are_refused_unless_allowed(script, tmp_path, capsys, tasks):
    with pytest.raises(SystemExit) as exit_:
        script["main"](["--out", str(tmp_path / "ds"), "--tasks", tasks])
    assert exit_.value.code == 2 and "test tasks of MetaWorld ML45" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
    ml45 = script["parse_args"](["--tasks", "ml45"]).tasks
    assert len(ml45) == 45 and not {"bin-picking-v3", "box-close-v3", "hand-insert-v3"} & set(ml45)
    assert "box-close-v3" in script["parse_args"](["--tasks", "all", "--allow-held-out"]).tasks
    held_out = script["parse_args"](["--tasks", "ml45-test", "--allow-held-out"]).tasks  # what `make corpus` scores on
    assert sorted(held_out) == ["bin-picking-v3", "box-close-v3", "door-lock-v3", "door-unlock-v3", "hand-insert-v3"]


COLLECT = ["--tasks", "reach-v3,button-press-v3", "--cameras", "corner2", "--resolution", "32",
           "--episodes-per-task", "3", "--max-frames", "80", "--mix", "expert=1,dart=1,explore=1",
           "--explore-frames", "4,4"]  # fmt: skip


def frames_of(dataset: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((dataset / "data").rglob("*.parquet"))], ignore_index=True)


def test_each_kind_is_recorded_and_workers_do_not_change_the_dataset(headless_gl, script, tmp_path):
    """Two spawned workers write what one process writes, frame for frame; each episode's layout names its kind,
    and the finished collection records its counts per kind and where its time went."""
    assert script["main"](["--out", str(tmp_path / "one"), *COLLECT]) == 0
    # the collector undid what its AV1 encoder (run as root) did: SCHED_FIFO, which the subprocess below inherits
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect_metaworld.py"), "--out",
                           str(tmp_path / "two"), *COLLECT, "--workers", "2"], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(expert 2, dart 2, explore 2)" in done.stdout and "episodes/min with 2 worker(s)" in done.stdout
    one, two = frames_of(tmp_path / "one"), frames_of(tmp_path / "two")
    pd.testing.assert_frame_equal(one, two)
    layouts = np.stack(one.groupby("episode_index")["layout"].first().to_numpy())
    assert sorted(layouts[:, 2].tolist()) == [0, 0, 1, 1, 2, 2]  # expert, dart, explore: once per task
    record = json.loads((tmp_path / "two" / "meta" / "collect.json").read_text())
    assert record["episodes"] == 6 and record["per_kind"] == {"expert": 2, "dart": 2, "explore": 2}
    assert set(record["profile_s"]) == {"simulate", "render", "write"} and record["mujoco_gl"] == headless_gl


def hand_path(script, kind: str, **overrides) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(hand positions [T, 3], executed actions [T, 4], success frame) of a reach-v3 rollout on layout 0, without
    rendering."""
    args = script["parse_args"](["--noise", "0", "--max-frames", "80"])
    vars(args).update(overrides)
    from robofm.sim.metaworld import make_env, mt1_layouts

    env, repeat = make_env("reach-v3", args.fps, args.max_frames)
    env.set_task(mt1_layouts("reach-v3", 0)[0])
    from metaworld.policies import ENV_POLICY_MAP

    ep = script["run_episode"](env, ENV_POLICY_MAP["reach-v3"](), None, np.random.default_rng(0), args, repeat, kind)
    env.close()
    return np.stack([f["state"][:3] for f in ep.frames]), np.stack([f["action"] for f in ep.frames]), ep.success_frame


def test_dart_and_explore_leave_the_experts_path_and_the_expert_recovers(headless_gl, script):
    expert, _, done = hand_path(script, "expert")
    dart, _, dart_done = hand_path(script, "dart", dart_std=0.5)
    explore, actions, explore_done = hand_path(script, "explore", explore_frames=(8, 8))
    assert done is not None and dart_done is not None and explore_done is not None  # all three reach the goal
    n = min(len(expert), len(dart))
    assert np.linalg.norm(dart[:n] - expert[:n], axis=1).max() > 0.02  # more than 2 cm off the expert's path
    assert np.linalg.norm(explore[8] - expert[8]) > 0.02
    assert all((actions[i] == actions[i - i % 4]).all() for i in range(8))  # random actions held 4 frames each
    assert explore_done > done  # the detour costs time
