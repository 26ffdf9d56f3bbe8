"""A robofm export as a LeRobot policy: LeRobot batches of several environments in, actions in robot units out.

    lerobot-eval --policy.path=EXPORT --env.type=metaworld --env.task=button-press-v3 \
        --rename_map='{"observation.image": "observation.images.corner2"}'

The policy is robofm.policy.Policy, one per environment of the batch: each keeps its own history (the last
observations `stride` steps apart and the actions executed between them) and action queue, shares the model,
and starts afresh at `reset()`. A LeRobot batch holds float CHW images in [0, 1] under
`observation.images.<camera>` (B, 3, H, W) at any resolution, `observation.state` (B, Ds) and `task` (B strings);
images become the uint8 HWC frames robofm was trained on (exactly: LeRobot's floats are uint8 / 255) and the
policy resizes them. State and actions stay in robot units: robofm normalizes inside.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from lerobot.configs import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE
from torch import Tensor

from lerobot_policy_robofm.configuration_robofm import RobofmConfig
from robofm.models.pretrained import export, load_diffusion, read_json_object
from robofm.policy import Policy, load_policy

LEROBOT_CONFIG = "config.json"


class RobofmPolicy(PreTrainedPolicy):
    config_class = RobofmConfig
    name = "robofm"

    def __init__(self, config: RobofmConfig, **kwargs) -> None:
        """The policy of the export at `config.pretrained_path` (`--policy.path`); a robofm policy is never built
        from scratch (pretrain with robofm-train, fine-tune with robofm-finetune)."""
        super().__init__(config)
        if config.pretrained_path is None:
            raise ValueError("a robofm policy loads a robofm export: pass --policy.path=EXPORT (or from_pretrained); "
                             "train one with robofm-train or robofm-finetune")  # fmt: skip
        self.source = Path(config.pretrained_path)
        self.robofm = load_policy(self.source, embodiment=config.embodiment, temperature=config.temperature,
                                  ensemble=config.ensemble, seed=config.seed, device=config.device,
                                  estimate=config.estimate, execute=config.execute,
                                  hide_past_actions=config.hide_past_actions)  # fmt: skip
        self.model = self.robofm.model  # a submodule: .to(), .parameters() and state_dict() reach robofm's weights
        self.cameras = list(self.robofm.builder.cameras)
        action = (config.output_features or {}).get(ACTION)
        if action is not None and tuple(action.shape) != (self.robofm.action_dim,):
            raise ValueError(f"{self.source} acts with {self.robofm.action_dim} action dimensions for embodiment "
                             f"{self.robofm.embodiment!r}; the environment or dataset expects {tuple(action.shape)}")  # fmt: skip
        self.envs: list[Policy] = []
        self.reset()

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *, config: PreTrainedConfig | None = None,
                        **kwargs) -> RobofmPolicy:  # fmt: skip
        """The policy of a robofm export folder holding LeRobot's config.json (every export writes one). Keyword
        arguments of LeRobot's loader (revision, dataset_stats, ...) are accepted and unused: the export holds
        everything, its normalization statistics included."""
        path = Path(pretrained_name_or_path)
        if not (path / "model.json").is_file() and (path / "export" / "model.json").is_file():
            path = path / "export"  # a run folder, as robofm.load_policy takes it
        if not (path / "model.json").is_file():
            raise FileNotFoundError(f"{path} is not a robofm export folder (no model.json): give RUN/export")
        if config is None:
            if not (path / LEROBOT_CONFIG).is_file():
                raise FileNotFoundError(
                    f"{path} is a robofm export without LeRobot's {LEROBOT_CONFIG} (exported before robofm wrote "
                    'it): add it with `python -c "from robofm.models.pretrained import add_lerobot_files; '
                    f"add_lerobot_files('{path}')\"`"
                )
            config = PreTrainedConfig.from_pretrained(path, cli_overrides=kwargs.get("cli_overrides", []))
        config.pretrained_path = path
        policy = cls(config)
        policy.to(config.device)
        policy.eval()
        return policy

    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """A robofm export (with these weights and LeRobot's files), then this config over its config.json."""
        trained_on = self.source / "trained_on.json"
        weights = {k.removeprefix("model."): v for k, v in (state_dict or self.state_dict()).items()}
        export(save_directory, self.model, self.robofm.builder, load_diffusion(self.source), weights,
               read_json_object(trained_on) if trained_on.is_file() else None)  # fmt: skip
        self.config._save_pretrained(save_directory)

    # ------------------------------------------------------------------------------------------------ acting

    def reset(self) -> None:
        """A new episode in every environment: the histories are dropped (the next batch makes one per row)."""
        self.envs = []

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], **kwargs) -> Tensor:
        """The actions (B, action_dim) float32, robot units, to execute now in each of the batch's environments."""
        observations = self._observations(batch)
        actions = np.stack([env.select_action(obs) for env, obs in zip(self.envs, observations, strict=True)])
        return torch.from_numpy(actions).to(batch[OBS_STATE].device)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], **kwargs) -> Tensor:
        """The chunks (B, stride, action_dim) each environment's policy predicts now from its history and this
        observation, which leaves the histories as they were."""
        observations = self._observations(batch)
        chunks = np.stack([env.predict_chunk(obs) for env, obs in zip(self.envs, observations, strict=True)])
        return torch.from_numpy(chunks).to(batch[OBS_STATE].device)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict | None]:
        raise NotImplementedError(
            "a robofm policy is trained by robofm, not lerobot-train: fine-tune it with `robofm-finetune "
            f"experiment=finetune init_from={self.source} data.path=STORE` (robofm-convert lerobot DATASET makes "
            "the store) and load the new export with --policy.path"
        )

    def get_optim_params(self) -> dict:
        return self.parameters()

    def _observations(self, batch: dict[str, Tensor]) -> list[dict]:
        """One robofm observation per row: {"images": {cam: HxWx3 uint8}, "state": [Ds], "task": str}; the
        environments' policies are made at the first batch after reset()."""
        keys = {cam: f"{OBS_IMAGES}.{cam}" for cam in self.cameras}
        missing = [key for key in [*keys.values(), OBS_STATE] if key not in batch]
        if missing:
            raise KeyError(f"the batch lacks {missing} (it holds {sorted(batch)}); name an environment's camera as "
                           f"the model's with --rename_map, e.g. '{{\"observation.image\": \"{keys[self.cameras[0]]}\"}}'")  # fmt: skip
        state = batch[OBS_STATE].detach().to("cpu", torch.float32).numpy()
        n = len(state)
        images = {cam: uint8_hwc(batch[key]) for cam, key in keys.items()}
        tasks = batch.get("task")
        tasks = [tasks] * n if tasks is None or isinstance(tasks, str) else list(tasks)
        tasks = [t or self.config.task for t in tasks]
        if not self.envs:
            self.envs = [self._fresh() for _ in range(n)]
        if len(self.envs) != n:
            raise ValueError(f"the batch holds {n} environments, the episode began with {len(self.envs)}: reset()")
        return [{"images": {cam: images[cam][i] for cam in self.cameras}, "state": state[i], "task": tasks[i]}
                for i in range(n)]  # fmt: skip

    def _fresh(self) -> Policy:
        env = copy.copy(self.robofm)  # shares the model and the builder; reset() gives it its own history
        env.reset()
        return env


def uint8_hwc(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] (LeRobot's images) or (B, H, W, 3) uint8 -> (B, H, W, 3) uint8."""
    if images.dtype == torch.uint8:
        return images.cpu().numpy() if images.shape[-1] == 3 else images.permute(0, 2, 3, 1).cpu().numpy()
    out = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)  # exact for uint8 / 255
    return out.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (B, H, W, 3)
