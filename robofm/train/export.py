"""The exported VLA base: weights, model config and the tokenization (tokenizers, statistics, layout).

    export/  model.safetensors   weights (the EMA weights when the run kept an EMA)
             model.json          the ModelConfig
             diffusion.json      the frame diffusion it was trained with (kind, prediction, target)
             tokenization/       sequence.json and the text, action and image tokenizers
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from robofm.errors import UsageError
from robofm.models.build import load_sequence_builder, save_sequence_builder
from robofm.models.config import ModelConfig
from robofm.models.robofm import RobofmModel
from robofm.models.sequence import SequenceBuilder
from robofm.objectives.flow_matching import FrameDiffusion


@dataclass
class Pretrained:
    """A loaded VLA base: the model (eval mode), the SequenceBuilder that tokenizes its inputs and the frame
    diffusion that turns its frame head into imagined frames."""

    model: RobofmModel
    builder: SequenceBuilder
    diffusion: FrameDiffusion


def export(directory: Path, model: RobofmModel, builder: SequenceBuilder, diffusion: FrameDiffusion,
           ema: dict | None = None) -> Path:  # fmt: skip
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = ema if ema is not None else model.state_dict()
    save_file({k: v.detach().to(torch.float32).contiguous().cpu() for k, v in weights.items()},
              str(directory / "model.safetensors"))  # fmt: skip
    (directory / "model.json").write_text(json.dumps(model.cfg.to_dict(), indent=1))
    (directory / "diffusion.json").write_text(json.dumps(diffusion.settings(), indent=1))
    save_sequence_builder(builder, directory / "tokenization")
    return directory


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    """The model and tokenization of an export folder, or of a run folder (its export/)."""
    path = Path(path)
    if not (path / "model.json").is_file() and (path / "export" / "model.json").is_file():
        path = path / "export"
    if not (path / "model.json").is_file():
        raise UsageError(f"{path} is not a robofm export: model.json is missing")
    cfg = ModelConfig(**json.loads((path / "model.json").read_text()))
    model = RobofmModel(cfg)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return Pretrained(model.to(device).eval(), load_sequence_builder(path / "tokenization"), load_diffusion(path))


def load_diffusion(path: Path) -> FrameDiffusion:
    """The frame diffusion of an export folder (diffusion.json) or a checkpoint folder (the objective of its
    config.yaml); the default objective's for an export from before diffusion.json was written."""
    if (path / "diffusion.json").is_file():
        return FrameDiffusion(**json.loads((path / "diffusion.json").read_text()))
    if (path / "config.yaml").is_file():
        from omegaconf import OmegaConf

        o = OmegaConf.to_container(OmegaConf.load(path / "config.yaml")).get("objective", {})
        return FrameDiffusion(o.get("frame_diffusion", "flow"), o.get("logit_mean", 0.0), o.get("logit_std", 1.0),
                              o.get("frame_prediction", "velocity"), o.get("frame_target", "frame"))  # fmt: skip
    return FrameDiffusion()
