"""The LeRobot config of a robofm policy: the export's features plus robofm.load_policy's inference settings.

A robofm export writes it as config.json (robofm.models.pretrained.write_lerobot_files); every field can be
overridden on LeRobot's command line (`--policy.execute=1`, `--policy.task="open the door"`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.optim import AdamWConfig


@PreTrainedConfig.register_subclass("robofm")
@dataclass
class RobofmConfig(PreTrainedConfig):
    """input_features: `observation.images.<camera>` (VISUAL, (3, H, W) at the model's frame size) for each of
    the model's cameras and `observation.state` (STATE); output_features: `action` (ACTION). State and action are
    robot units: robofm normalizes inside the policy with the statistics it was trained with, so
    `normalization_mapping` is IDENTITY and the processors pass values through.

    task: the instruction for a batch without one (or with an empty one); embodiment: which of the model's
    embodiments acts (None: the one it was trained or fine-tuned on). The rest are robofm.policy.Policy's."""

    task: str = ""
    embodiment: str | None = None
    temperature: float = 0.0
    seed: int = 0
    estimate: str = "mean"
    execute: int | None = None
    ensemble: float | None = None
    hide_past_actions: bool | None = None
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.IDENTITY,
            "ACTION": NormalizationMode.IDENTITY,
        }
    )
    optimizer_lr: float = 3e-4  # experiment=finetune's rate (fine-tuning itself is robofm-finetune's)

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr)

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        if not self.image_features:
            raise ValueError("a robofm policy needs its cameras among the input features (observation.images.*)")

    @property
    def observation_delta_indices(self) -> None:
        return None  # the policy keeps its own history of observations

    @property
    def action_delta_indices(self) -> None:
        return None

    @property
    def reward_delta_indices(self) -> None:
        return None
