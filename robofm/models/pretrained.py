"""A trained model, written and read one way: `export` writes it, `from_pretrained` loads it for every command.

    RUN/export/                  the exported VLA base:
        model.safetensors        weights (the EMA weights when the run kept an EMA)
        model.json               the ModelConfig
        diffusion.json           the frame diffusion it was trained with (kind, prediction, target)
        tokenization/            sequence.json and the text, action and image tokenizers
        trained_on.json          what trained it: its stores and their embodiments, and the base's stores
                                 (read by load_policy for its default embodiment, by robofm-eval-sim for held-out
                                 layouts), and a summary of its data (robofm.models.card.data_summary)
        train_config.yaml        the run's resolved robofm-train config
        README.md                the model card (robofm.models.card), refreshed by robofm-eval and robofm-eval-sim
        config.json, policy_{pre,post}processor.json   what LeRobot's factory reads (--policy.path=EXPORT): the
                                 lerobot_policy_robofm plugin (plugins/) loads the export as a LeRobot policy
        evals/                   their results on it
    RUN/tokenization/            the run's tokenization, written when it starts
    RUN/checkpoints/step-N/      model.safetensors, config.yaml, state.pt (training state: robofm.train.checkpoint)
    RUN/checkpoints/latest       the name of the newest complete checkpoint
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robofm.errors import UsageError
from robofm.models.card import TRAIN_CONFIG, write_model_card
from robofm.models.config import SHAPE, ModelConfig, model_config
from robofm.models.diffusion import FrameDiffusion
from robofm.models.robofm import RobofmModel
from robofm.tokenization.build import load_sequence_builder, save_sequence_builder
from robofm.tokenization.sequence import SequenceBuilder

log = logging.getLogger(__name__)
LATEST = "latest"
TRAINED_ON = "trained_on.json"
REQUIRED_MODEL_KEYS = ("dim", "depth", "heads", "vocab_size", "patch_dim", "state_dim")  # model.json since the first
POSITIVE_MODEL_KEYS = {"dim", "depth", "heads", "vocab_size", "patch_dim", "max_cameras", "max_patches"}
TYPE_WORDS = {float: "a positive number", str: "a string", bool: "true or false", dict: "an object"}


@dataclass
class Pretrained:
    """A loaded model (eval mode), the SequenceBuilder that tokenizes its inputs, the frame diffusion that turns its
    frame head into imagined frames, and where it came from ("export DIR" or "checkpoint DIR")."""

    model: RobofmModel
    builder: SequenceBuilder
    diffusion: FrameDiffusion
    source: str
    trained_on: dict = field(default_factory=dict)  # trained_on.json of an export ({} for checkpoints, old exports)

    @property
    def stores(self) -> list[str]:
        """Every store that trained this model: its own and, for a fine-tuned model, its base's."""
        return list(dict.fromkeys(self.trained_on.get("stores", []) + (self.trained_on.get("base_stores") or [])))

    @property
    def stores_known(self) -> bool:
        """Whether `stores` is every store behind the model: False for an export without trained_on.json (older
        ones, checkpoints) and for a fine-tune of such a base (its base_stores are null)."""
        return bool(self.trained_on) and self.trained_on.get("base_stores", []) is not None


def export(directory: Path, model: RobofmModel, builder: SequenceBuilder, diffusion: FrameDiffusion,
           ema: dict | None = None, trained_on: dict | None = None, config: str | None = None) -> Path:  # fmt: skip
    """Write the export folder (see the module docstring); `ema` replaces the model's weights when given;
    `trained_on` ({"stores": [...], "embodiments": [...], "base_stores": [...], "data": [...]}) becomes
    trained_on.json; `config` (the run's resolved config as YAML) train_config.yaml. Last, the model card
    (README.md, robofm.models.card) is written from all of it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = ema if ema is not None else model.state_dict()
    save_file({k: v.detach().to(torch.float32).contiguous().cpu() for k, v in weights.items()},
              str(directory / "model.safetensors"))  # fmt: skip
    (directory / "model.json").write_text(json.dumps(model.cfg.to_dict(), indent=1))
    (directory / "diffusion.json").write_text(json.dumps(diffusion.settings(), indent=1))
    save_sequence_builder(builder, directory / "tokenization")
    if trained_on is not None:
        (directory / TRAINED_ON).write_text(json.dumps(trained_on, indent=1))
    if config is not None:
        (directory / TRAIN_CONFIG).write_text(config)
    write_lerobot_files(directory, builder, trained_on)
    write_model_card(directory)
    return directory


def write_lerobot_files(directory: Path, builder: SequenceBuilder, trained_on: dict | None = None) -> None:
    """LeRobot's files in an export, so that `--policy.path=EXPORT` loads it as the policy type "robofm" (the
    lerobot_policy_robofm plugin): config.json (what LeRobot's PreTrainedConfig.from_pretrained parses; the model's
    cameras as `observation.images.<camera>` at its frame size (3, H, W), the state and the action of the default
    embodiment) and pass-through processors (robofm normalizes inside the policy). Plain JSON: no lerobot import."""
    directory = Path(directory)
    embodiments = (trained_on or {}).get("embodiments") or builder.embodiments
    embodiment = embodiments[0] if len(embodiments) == 1 else None  # several: --policy.embodiment=NAME
    state_dim = builder.state_norm.dims(embodiment) if embodiment else builder.state_dim
    action_dim = builder.action_norm.dims(embodiment) if embodiment else builder.action_dim
    h, w = builder.frame_shape[:2]
    inputs = {f"observation.images.{cam}": {"type": "VISUAL", "shape": [3, h, w]} for cam in builder.cameras}
    inputs["observation.state"] = {"type": "STATE", "shape": [state_dim]}
    tasks = _trained_tasks(trained_on)
    config = {
        "type": "robofm",
        "input_features": inputs,
        "output_features": {"action": {"type": "ACTION", "shape": [action_dim]}},
        "push_to_hub": False,
        "embodiment": embodiment,
        "task": tasks[0] if len(tasks) == 1 else "",
    }
    device = {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}
    rename = {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}}
    pipelines = {
        "policy_preprocessor": [rename, {"registry_name": "to_batch_processor", "config": {}}, device],
        "policy_postprocessor": [device],
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    for name, steps in pipelines.items():
        (directory / f"{name}.json").write_text(json.dumps({"name": name, "steps": steps}, indent=1))


def add_lerobot_files(path: str | Path) -> Path:
    """Write LeRobot's files (write_lerobot_files) into an export made before robofm wrote them; the export."""
    pre = from_pretrained(path)
    if not pre.source.startswith("export "):
        raise UsageError(f"{path} is not an export folder: LeRobot loads exports (RUN/export)")
    directory = Path(pre.source.removeprefix("export "))
    write_lerobot_files(directory, pre.builder, pre.trained_on or None)
    return directory


def _trained_tasks(trained_on: dict | None) -> list[str]:
    """The distinct tasks of the stores that trained the model (their manifests), [] where unknown."""
    tasks: set[str] = set()
    for store in (trained_on or {}).get("stores", []):
        try:
            tasks |= {e["task"] for e in json.loads((Path(store) / "manifest.json").read_text())["episodes"]}
        except (OSError, ValueError, KeyError, TypeError):
            return []
    return sorted(tasks)


def from_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    """The model of an export folder, a run folder (its export/, else its latest checkpoint) or a checkpoint folder.

    A checkpoint folder gives its model.safetensors (not the EMA weights) with the run's tokenization
    (RUN/tokenization) and the model config of RUN/export/model.json, or, before the run exported, the one that
    config.yaml's model.size, model.attention and shape keys (model.dim, depth, heads, ffn_dim) rebuild.
    UsageError, naming the folder and what it holds, for anything else."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist: give an export, run or checkpoint folder")
    if not (path / "model.json").is_file() and (path / "export" / "model.json").is_file():
        path = path / "export"
    if (path / "model.json").is_file():
        cfg = read_model_config(path / "model.json")
        builder = _load_builder(path / "tokenization")
        pre = _load(cfg, path / "model.safetensors", builder, load_diffusion(path), f"export {path}", device)
        if (path / TRAINED_ON).is_file():
            pre.trained_on = read_json_object(path / TRAINED_ON)
        return pre
    try:
        ckpt = resolve_checkpoint(path)
    except UsageError as e:
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        raise UsageError(f"{path} is not an export, run or checkpoint folder (it holds {found}): {e}") from e
    run = ckpt.parent.parent
    if not (run / "tokenization" / "sequence.json").is_file():
        raise UsageError(f"checkpoint {ckpt} has no tokenization: expected {run / 'tokenization'}")
    builder = _load_builder(run / "tokenization")
    if (run / "export" / "model.json").is_file():
        cfg = read_model_config(run / "export" / "model.json")
    else:
        model = _read_yaml(ckpt / "config.yaml").get("model")
        if not isinstance(model, dict) or not isinstance(model.get("size"), str):
            raise UsageError(f"{ckpt / 'config.yaml'}: model.size is missing: cannot rebuild the model")
        shape = {k: model.get(k) for k in SHAPE}  # what the run set over its size's preset (None: the preset's)
        try:
            attention, adaln = model.get("attention", "sdpa"), model.get("adaln", False)
            prev = model.get("prev_frame_input", False)  # runs from before the option had none
            cfg = model_config(builder, model["size"], attention=attention, adaln=adaln, prev_frame_input=prev, **shape)
        except (TypeError, ValueError, KeyError) as e:
            raise UsageError(f"{ckpt / 'config.yaml'}: cannot rebuild the model from its model keys: {e}") from e
    return _load(cfg, ckpt / "model.safetensors", builder, load_diffusion(ckpt), f"checkpoint {ckpt}", device)


def _load(cfg: ModelConfig, weights: Path, builder: SequenceBuilder, diffusion: FrameDiffusion, source: str,
          device: str | torch.device) -> Pretrained:  # fmt: skip
    model = RobofmModel(cfg)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (OSError, SafetensorError, RuntimeError) as e:  # a missing or truncated file, or weights of another shape
        raise UsageError(f"cannot load the weights {weights}: {e}") from e
    return Pretrained(model.to(device).eval(), builder, diffusion, source)


def load_diffusion(path: Path) -> FrameDiffusion:
    """The frame diffusion of an export folder (diffusion.json) or a checkpoint folder (the objective of its
    config.yaml); the default objective's for an export from before diffusion.json was written."""
    if (path / "diffusion.json").is_file():
        file = path / "diffusion.json"
        settings = read_json_object(file)
        known = inspect.signature(FrameDiffusion).parameters
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise UsageError(f"{file}: unknown key {unknown[0]!r} (a frame diffusion has {', '.join(known)})")
    elif (path / "config.yaml").is_file():
        file = path / "config.yaml"
        o = _read_yaml(file).get("objective") or {}
        settings = {
            "kind": o.get("frame_diffusion", "flow"),
            "logit_mean": o.get("logit_mean", 0.0),
            "logit_std": o.get("logit_std", 1.0),
            "prediction": o.get("frame_prediction", "velocity"),
            "target": o.get("frame_target", "frame"),
        }
    else:
        return FrameDiffusion()
    try:
        return FrameDiffusion(**settings)
    except (UsageError, TypeError, ValueError) as e:
        raise UsageError(f"{file}: {e}") from e


# ------------------------------------------------------------------------------------------------ files


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; UsageError naming the file when it cannot be read, is not JSON or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise UsageError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_model_config(path: Path) -> ModelConfig:
    """The ModelConfig of a model.json: every key one of ModelConfig's, the shape keys present, each value of its
    field's type (integers positive where a size); UsageError naming the file and the key otherwise."""
    d = read_json_object(path)
    defaults = ModelConfig().to_dict()
    unknown = sorted(set(d) - set(defaults))
    if unknown:
        raise UsageError(f"{path}: unknown key {unknown[0]!r} (a ModelConfig has {', '.join(defaults)})")
    missing = [k for k in REQUIRED_MODEL_KEYS if k not in d]
    if missing:
        raise UsageError(f"{path}: missing key {missing[0]!r}")
    for key, value in d.items():
        kind = type(defaults[key])
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        elif kind is int:
            ok = type(value) is int and (value > 0 if key in POSITIVE_MODEL_KEYS else value >= 0)
        else:
            ok = isinstance(value, kind)
        if not ok:
            what = TYPE_WORDS[kind] if kind is not int else "a non-negative integer"
            what = "a positive integer" if key in POSITIVE_MODEL_KEYS else what
            raise UsageError(f"{path}: {key} must be {what}, got {value!r}")
    try:
        return ModelConfig(**d)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from e


def _read_yaml(path: Path) -> dict:
    """A checkpoint's config.yaml as plain containers; UsageError naming the file when it is not a YAML mapping."""
    try:
        value = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # yaml's and omegaconf's errors share no base class
        raise UsageError(f"{path} cannot be read as YAML: {e}") from e
    if not isinstance(value, dict):
        raise UsageError(f"{path}: expected a YAML mapping, got {type(value).__name__}")
    return value


def _load_builder(directory: Path) -> SequenceBuilder:
    """load_sequence_builder, with the errors of a damaged tokenization folder as one UsageError naming it."""
    try:
        return load_sequence_builder(directory)
    except UsageError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:  # ValueError: bad JSON too
        for file in sorted(Path(directory).rglob("*.json")):  # the error path only: name the file when it is one
            try:
                json.loads(file.read_text())
            except (OSError, ValueError) as bad:
                raise UsageError(f"the tokenization in {directory} is damaged: {file} is not valid JSON: {bad}") from e
        raise UsageError(f"the tokenization in {directory} is damaged: {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------------------------------ run folders


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoint folders of RUN/checkpoints, oldest step first (a folder is renamed into place
    complete)."""
    return sorted(p for p in root.glob("step-*") if (p / "state.pt").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names in run_dir/checkpoints, or None when there is none yet. When `latest` is
    missing or names no complete checkpoint (a kill between the steps of a save), the newest complete one."""
    root = Path(run_dir) / "checkpoints"
    try:
        path = root / (root / LATEST).read_text().strip()
    except FileNotFoundError:
        path = None
    if path is not None and (path / "state.pt").is_file():
        return path
    found = complete_checkpoints(root) if root.is_dir() else []
    if found:
        log.warning("%s names no complete checkpoint: using the newest complete one, %s", root / LATEST, found[-1])
        return found[-1]
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a run folder (its latest checkpoint) or a checkpoints folder."""
    path = Path(path)
    if (path / "state.pt").is_file():
        return path
    for run in (path, path.parent):
        found = latest_checkpoint(run) if (run / "checkpoints").is_dir() else None
        if found:
            return found
    raise UsageError(f"{path} is neither a checkpoint folder (with state.pt) nor a run folder with checkpoints")
