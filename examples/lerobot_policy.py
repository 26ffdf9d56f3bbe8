"""A robofm export through LeRobot's own factory, on batches shaped like a LeRobot env's (2 environments, float
CHW images in [0, 1] at the camera's resolution, state in robot units), next to robofm.load_policy.

    .venv/bin/python examples/lerobot_policy.py outputs/finetune/export [--steps 4] [--size 240x320]

An export written before robofm wrote LeRobot's files gets them first (add_lerobot_files).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from lerobot.configs import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins

import robofm
from robofm.models.pretrained import add_lerobot_files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export", type=Path)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", default="240x320", help="the environment's camera resolution, HxW")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    if not (args.export / "config.json").is_file():
        add_lerobot_files(args.export)
    register_third_party_plugins()  # what lerobot-eval, -train and -rollout do first: imports lerobot_policy_robofm
    cfg = PreTrainedConfig.from_pretrained(args.export)
    policy = get_policy_class(cfg.type).from_pretrained(args.export)
    pre, post = make_pre_post_processors(cfg, pretrained_path=args.export,
                                         preprocessor_overrides={"device_processor": {"device": "cpu"}})  # fmt: skip
    cameras = [k for k in cfg.input_features if k.startswith("observation.images.")]
    state_dim = cfg.input_features["observation.state"].shape[0]
    print(f"{type(policy).__name__} (type {cfg.type!r}) from {args.export}: cameras {cameras}, state {state_dim}, "
          f"action {cfg.output_features['action'].shape[0]}, task {cfg.task!r}")
    rng = np.random.default_rng(0)
    references = [robofm.load_policy(args.export) for _ in range(2)]  # one per environment
    policy.reset()
    for t in range(args.steps):
        images = {cam: rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8) for cam in cameras}
        state = rng.normal(0, 0.1, (2, state_dim)).astype(np.float32)
        batch = {**{cam: torch.from_numpy(images[cam]).permute(0, 3, 1, 2).float() / 255 for cam in cameras},
                 "observation.state": torch.from_numpy(state), "task": [cfg.task] * 2}  # fmt: skip
        action = post(policy.select_action(pre(batch)))
        same = all(np.array_equal(action[e].numpy(), references[e].select_action(
            {"images": {c.removeprefix("observation.images."): images[c][e] for c in cameras}, "state": state[e],
             "task": cfg.task})) for e in range(2))  # fmt: skip
        print(f"step {t}: action {tuple(action.shape)} {np.array2string(action.numpy(), precision=3, separator=', ').replace(chr(10), '')}; "
              f"equal to robofm.load_policy's: {same}")


if __name__ == "__main__":
    main()
