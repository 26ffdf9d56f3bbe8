"""robofm.load_policy: raw observations of any resolution in, actions in robot units out, chunks played from a
queue (or ensembled), reproducible with a seed, and a clear error for a malformed observation."""

from __future__ import annotations

import numpy as np
import pytest

import robofm
from robofm.errors import UsageError
from tests.train.conftest import TINY, train_in_process


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_store):
    run = tmp_path_factory.mktemp("policy") / "run"
    train_in_process(run, TINY + [f"data.path={tiny_store}", "trainer.max_steps=3"])
    return run


def observation(t: int, size=(30, 20)) -> dict:
    rng = np.random.default_rng(t)
    images = {cam: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for cam in ("front", "wrist")}
    return {"images": images, "state": np.array([t, 1.0, 0.0]), "task": "pick"}


def test_actions_have_the_embodiments_shape_and_stay_in_its_range(export):
    policy = robofm.load_policy(export)
    lo, hi = policy.builder.action_norm.bounds["arm"]
    actions = np.stack([policy.select_action(observation(t)) for t in range(7)])
    assert actions.shape == (7, 2) and actions.dtype == np.float32 and np.isfinite(actions).all()
    assert (actions >= lo - 1e-4).all() and (actions <= hi + 1e-4).all()  # binning decodes within q01..q99


def test_chunks_are_predicted_every_stride_steps_and_sampling_is_reproducible(export, monkeypatch):
    import robofm.policy as module

    calls = []
    real = module.predict_action_chunk
    monkeypatch.setattr(module, "predict_action_chunk", lambda *a, **k: calls.append(a[2]["state"].shape) or real(*a, **k))
    policy = robofm.load_policy(export, temperature=1.0, seed=3)
    first = [policy.select_action(observation(t)) for t in range(6)]
    stride = policy.stride
    assert len(calls) == 6 // stride and [c[1] for c in calls] == [1, 2, 2]  # history grows to the 2-step window
    policy.reset()
    again = [policy.select_action(observation(t)) for t in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    calls.clear()
    ensembled = robofm.load_policy(export, ensemble=0.5)
    out = [ensembled.select_action(observation(t)) for t in range(4)]
    assert len(calls) == 4 and all(a.shape == (2,) for a in out)


@pytest.mark.parametrize(("obs", "message"), [
    ({"images": {}, "state": [0, 0, 0]}, "observation must be"),
    ({"images": {"front": np.zeros((8, 8, 3), np.uint8)}, "state": [0, 0, 0], "task": "x"}, "lack camera(s) ['wrist']"),
    ({**observation(0), "state": [0, 0]}, "state must be 3 finite numbers for embodiment 'arm'"),
    ({**observation(0), "images": {"front": np.zeros((8, 8), np.uint8), "wrist": np.zeros((8, 8, 3), np.uint8)}},
     "images['front'] must be HxWx3 uint8"),
])  # fmt: skip
def test_a_malformed_observation_names_what_was_expected(export, obs, message):
    with pytest.raises(UsageError) as e:
        robofm.load_policy(export).select_action(obs)
    assert message in str(e.value)


def test_execute_replans_sooner_and_hidden_past_actions_reach_the_sampler(export, monkeypatch):
    """execute=1 predicts a chunk at every step and plays its first action (observations still stride apart);
    hide_past_actions is passed through to predict_action_chunk; execute outside 1..stride is refused."""
    import robofm.policy as module

    calls = []
    real = module.predict_action_chunk
    monkeypatch.setattr(module, "predict_action_chunk", lambda *a, **k: calls.append(k) or real(*a, **k))
    policy = robofm.load_policy(export, execute=1, hide_past_actions=True)
    actions = [policy.select_action(observation(t)) for t in range(5)]
    assert len(calls) == 5 and all(c["hide_past_actions"] is True for c in calls) and actions[0].shape == (2,)
    with pytest.raises(UsageError, match="execute 1 to 2"):
        robofm.load_policy(export, execute=3)


def test_the_past_chunks_are_the_actions_executed_between_the_observations(export, monkeypatch):
    """Once the history is full, the chunk between two observations is the actions sent at their steps: the
    observation of step a and the actions of steps a .. a + stride - 1."""
    import robofm.policy as module

    batches = []
    real = module.predict_action_chunk
    monkeypatch.setattr(module, "predict_action_chunk", lambda *a, **k: batches.append(a[2]) or real(*a, **k))
    policy = robofm.load_policy(export, execute=1)
    sent = [policy.select_action(observation(t)) for t in range(9)]
    s = policy.stride
    for t in range(2 * s, 9):  # step t predicts from the observations of steps t - s and t (window_len 2)
        np.testing.assert_array_equal(batches[t]["state"][0, :, 0].numpy(), [t - s, t])
        np.testing.assert_array_equal(batches[t]["actions"][0, 0].numpy(), np.stack(sent[t - s : t]))


def test_a_fork_shares_the_model_and_starts_its_own_episode(export):
    """Policy.fork (a robofm-serve connection): the same weights, a fresh history and generator, and the episode
    it forked from goes on untouched."""
    policy = robofm.load_policy(export, temperature=1.0, seed=3)
    first = [policy.select_action(observation(t)) for t in range(3)]
    fork = policy.fork()
    assert fork.model is policy.model and fork.frames is not policy.frames and len(fork.frames) == 0
    forked = [fork.select_action(observation(t)) for t in range(3)]
    rest = [policy.select_action(observation(t)) for t in range(3, 5)]
    fresh = robofm.load_policy(export, temperature=1.0, seed=3)
    expected = [fresh.select_action(observation(t)) for t in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(first + rest, expected, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(forked, expected[:3], strict=True))


def test_the_shipped_corpus_base_loads_as_a_policy_of_metaworlds_sawyer():
    """bases/metaworld_ml45_tiny, the base the few-shot experiment fine-tunes, stays loadable as the code changes."""
    from pathlib import Path

    base = Path(__file__).resolve().parents[2] / "bases" / "metaworld_ml45_tiny"
    policy = robofm.load_policy(base, seed=0)
    assert policy.builder.cameras == ["corner2"] and policy.embodiment == "sawyer"
    rng = np.random.default_rng(0)
    for _ in range(3):
        image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        action = policy.select_action({"images": {"corner2": image}, "state": np.zeros(4, np.float32),
                                       "task": "insert the gripper into the hole"})  # fmt: skip
        assert action.shape == (4,) and np.isfinite(action).all()
