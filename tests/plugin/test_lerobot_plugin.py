"""lerobot_policy_robofm: a robofm export loads through LeRobot's own factory and acts on LeRobot-shaped batches
(float CHW images in [0, 1], several environments) with the actions robofm.load_policy gives, one history per
environment, and a camera of another name matched through the rename map."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("lerobot_policy_robofm")

from lerobot.configs import PreTrainedConfig  # noqa: E402
from lerobot.policies.factory import get_policy_class, make_policy, make_pre_post_processors  # noqa: E402
from lerobot_policy_robofm import RobofmConfig, RobofmPolicy  # noqa: E402

import robofm  # noqa: E402
from robofm.models.pretrained import add_lerobot_files  # noqa: E402
from tests.train.conftest import TINY, train_in_process  # noqa: E402

SIZE = (30, 20)  # the environment's resolution; the model's frames are 8x8


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_store):
    run = tmp_path_factory.mktemp("plugin") / "run"
    train_in_process(run, TINY + [f"data.path={tiny_store}", "trainer.max_steps=3"])
    return run / "export"


def dataset_meta() -> SimpleNamespace:
    """What make_policy reads of a LeRobotDatasetMetadata: the features of a dataset of the debug robot."""
    image = {"dtype": "video", "shape": (*SIZE, 3), "names": ["height", "width", "channels"]}
    return SimpleNamespace(features={"observation.images.front": image, "observation.images.wrist": image,
                                     "observation.state": {"dtype": "float32", "shape": (3,), "names": None},
                                     "action": {"dtype": "float32", "shape": (2,), "names": None}}, stats=None)  # fmt: skip


def robofm_obs(t: int, env: int) -> dict:
    rng = np.random.default_rng(100 * env + t)
    images = {cam: rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for cam in ("front", "wrist")}
    return {"images": images, "state": np.array([t, env, 0.5], np.float32), "task": "pick"}


def lerobot_batch(observations: list[dict], front: str = "observation.images.front") -> dict:
    """A LeRobot env's batch of these observations: (B, 3, H, W) float images in [0, 1], (B, Ds) state, tasks."""

    def chw(cam):
        return torch.from_numpy(np.stack([o["images"][cam] for o in observations])).permute(0, 3, 1, 2).float() / 255

    return {front: chw("front"), "observation.images.wrist": chw("wrist"),
            "observation.state": torch.from_numpy(np.stack([o["state"] for o in observations])),
            "task": [o["task"] for o in observations]}  # fmt: skip


def rollout(policy, envs: list[list[dict]], **kw) -> np.ndarray:
    policy.reset()
    return np.stack([policy.select_action(lerobot_batch(list(step), **kw)).numpy() for step in zip(*envs, strict=True)])


def test_the_export_holds_lerobots_files_and_the_factory_builds_the_policy(export):
    config = json.loads((export / "config.json").read_text())
    assert config["type"] == "robofm" and config["task"] == "pick"
    assert config["input_features"]["observation.images.front"] == {"type": "VISUAL", "shape": [3, 8, 8]}
    assert config["output_features"]["action"]["shape"] == [2]
    cfg = PreTrainedConfig.from_pretrained(export)
    cfg.pretrained_path, cfg.device = export, "cpu"
    assert isinstance(cfg, RobofmConfig) and cfg.embodiment == "arm"
    policy = make_policy(cfg, ds_meta=dataset_meta())
    assert isinstance(policy, RobofmPolicy) and get_policy_class("robofm") is RobofmPolicy
    assert not policy.training and next(policy.parameters()).device.type == "cpu"


def test_actions_are_robofms_in_robot_units_per_environment(export):
    """B=2 environments at another resolution: each row gets the actions robofm.load_policy gives that
    environment's uint8 observations, step after step (so each keeps its own history), deterministically."""
    policy = get_policy_class("robofm").from_pretrained(export)
    envs = [[robofm_obs(t, env) for t in range(6)] for env in range(2)]
    actions = rollout(policy, envs)
    assert actions.shape == (6, 2, 2) and actions.dtype == np.float32
    for env in range(2):
        reference = robofm.load_policy(export)
        expected = np.stack([reference.select_action(obs) for obs in envs[env]])
        np.testing.assert_array_equal(actions[:, env], expected)
    np.testing.assert_array_equal(rollout(policy, envs), actions)  # after reset(): the same actions
    other = [envs[0], [robofm_obs(t, 7) for t in range(6)]]
    np.testing.assert_array_equal(rollout(policy, other)[:, 0], actions[:, 0])  # env 1 cannot move env 0


def test_processors_pass_through_and_the_rename_map_matches_a_camera(export):
    """The export's processors (as lerobot-eval loads them, with its overrides) leave values in robot units; a
    camera the environment calls "top" reaches the model's "front" through --rename_map."""
    cfg = PreTrainedConfig.from_pretrained(export)
    cfg.pretrained_path, cfg.device = export, "cpu"
    rename = {"observation.images.top": "observation.images.front"}
    policy = make_policy(cfg, ds_meta=dataset_meta(), rename_map=rename)
    pre, post = make_pre_post_processors(cfg, pretrained_path=export, preprocessor_overrides={
        "device_processor": {"device": "cpu"}, "rename_observations_processor": {"rename_map": rename}})  # fmt: skip
    envs = [[robofm_obs(t, env) for t in range(4)] for env in range(2)]
    expected = rollout(policy, envs)
    policy.reset()
    for t, step in enumerate(zip(*envs, strict=True)):
        batch = pre(lerobot_batch(list(step), front="observation.images.top"))
        np.testing.assert_array_equal(batch["observation.state"].numpy(), np.stack([o["state"] for o in step]))
        np.testing.assert_array_equal(post(policy.select_action(batch)).numpy(), expected[t])
    with pytest.raises(KeyError, match="rename_map"):
        policy.reset()
        policy.select_action(lerobot_batch([envs[0][0]], front="observation.images.top"))


def test_chunks_leave_the_history_and_forward_points_to_robofm_finetune(export):
    policy = get_policy_class("robofm").from_pretrained(export)
    batch = lerobot_batch([robofm_obs(0, 0), robofm_obs(0, 1)])
    chunk = policy.predict_action_chunk(batch)
    assert chunk.shape == (2, policy.robofm.stride, 2)
    np.testing.assert_array_equal(policy.select_action(batch).numpy(), chunk[:, 0].numpy())
    with pytest.raises(NotImplementedError, match="robofm-finetune"):
        policy.forward(batch)


def test_an_export_without_lerobots_files_gets_them_and_save_pretrained_round_trips(export, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(export, old, ignore=shutil.ignore_patterns("config.json", "policy_*.json"))
    with pytest.raises(FileNotFoundError, match="add_lerobot_files"):
        RobofmPolicy.from_pretrained(old)
    add_lerobot_files(old)
    policy = RobofmPolicy.from_pretrained(old, cli_overrides=["--execute=1"])
    assert policy.config.execute == 1
    policy.save_pretrained(tmp_path / "saved")
    again = RobofmPolicy.from_pretrained(tmp_path / "saved")
    envs = [[robofm_obs(t, 0) for t in range(4)]]
    assert again.config.execute == 1 and robofm.load_policy(tmp_path / "saved", execute=1)
    np.testing.assert_array_equal(rollout(again, envs), rollout(policy, envs))


def test_lerobot_discovers_the_installed_plugin(monkeypatch):
    """register_third_party_plugins (lerobot-eval, -train, -rollout) imports the distribution by its name."""
    import lerobot.utils.import_utils as utils

    try:
        importlib.metadata.distribution("lerobot_policy_robofm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("lerobot_policy_robofm is not installed (pip install -e plugins/lerobot_policy_robofm)")
    imported = []
    real = importlib.import_module
    monkeypatch.setattr(utils.importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    utils.register_third_party_plugins()
    assert "lerobot_policy_robofm" in imported and "robofm" in PreTrainedConfig.get_known_choices()
