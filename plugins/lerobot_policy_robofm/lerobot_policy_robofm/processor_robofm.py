"""The processors of a robofm policy: rename, batch and move to the device; no normalization.

robofm normalizes state and actions inside the policy (its own quantile bounds, clipped, constant dimensions
mapped to 0), which LeRobot's quantile modes do not reproduce, so values pass through in robot units both ways.
The rename step is the one `--rename_map` reaches (lerobot-eval overrides "rename_observations_processor").
"""

from __future__ import annotations

from typing import Any

import torch
from lerobot.processor import (
    AddBatchDimensionProcessorStep,
    DeviceProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    RenameObservationsProcessorStep,
)
from lerobot.processor.factory import make_policy_processor_pipelines

from lerobot_policy_robofm.configuration_robofm import RobofmConfig


def make_robofm_pre_post_processors(
    config: RobofmConfig, dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]
]:
    """(preprocessor, postprocessor); `dataset_stats` is ignored: the policy keeps the statistics it was trained
    with."""
    return make_policy_processor_pipelines(
        input_steps=[
            RenameObservationsProcessorStep(rename_map={}),
            AddBatchDimensionProcessorStep(),
            DeviceProcessorStep(device=config.device),
        ],
        output_steps=[DeviceProcessorStep(device="cpu")],
    )
