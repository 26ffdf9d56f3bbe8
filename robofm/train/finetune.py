"""Fine-tuning a pretrained VLA base (`robofm-finetune init_from=EXPORT ...`): adapt its tokenization and model
to new data, load its weights, and choose what trains.

A new embodiment (other state and action dimensions, its own statistics) is added, not substituted:
- the tokenizers and vocabulary stay the pretrained ones, so every token id keeps its meaning;
- embodiments the base knows keep their embedding row; new ones take the next free rows (fresh initialisation);
- normalization statistics (finetune.norm): "data" fits them to the new data for its embodiments and keeps the
  base's for the others; "base" keeps the base's for every embodiment it knows, so that a normalized state and an
  action bin mean what they meant in pretraining (openpi reuses its base's statistics for the robots it knows),
  and fits only new embodiments to the data;
- the state projection grows to the larger state dimension: the base's input columns are copied and the new
  ones start from the usual initialisation; so do camera and patch-position embeddings for more cameras or
  patches. Action dimensions need no new parameters (binning shares its bins across dimensions).

Modes (finetune.mode): "full" trains everything; "frozen" trains only embeddings, input projections, the
heads and the final norm (the Transformer blocks stay the base's); "lora" trains low-rank adapters (peft) on the
blocks' attention and MLP projections plus what "frozen" trains, and merges them into the weights at export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import nn

from robofm.errors import UsageError
from robofm.models.config import ModelConfig
from robofm.tokenization.build import dataset_normalizers
from robofm.tokenization.sequence import SequenceBuilder, SequenceConfig
from robofm.tokenizers.action import Normalizer

log = logging.getLogger(__name__)
MODES = ("full", "frozen", "lora")
NORMS = ("data", "base")
LORA_TARGETS = ["qkv", "out", "gate_up", "down"]  # the Linear layers of attention and MLP in each block


@dataclass
class FinetuneConfig:
    """What trains when the run starts from a base (`init_from=EXPORT`): mode full | frozen | lora; lora_rank and
    lora_alpha: the adapters' rank and scale (alpha / rank); norm: data | base, whose normalization statistics an
    embodiment the base knows gets (module docstring)."""

    mode: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    norm: str = "data"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"finetune.mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.norm not in NORMS:
            raise UsageError(f"finetune.norm must be one of {', '.join(NORMS)}, not {self.norm!r}")
        if self.lora_rank < 1:
            raise UsageError(f"finetune.lora_rank must be >= 1, not {self.lora_rank}")


def adapt_builder(base: SequenceBuilder, dataset, seq: SequenceConfig, norm: str = "data") -> SequenceBuilder:
    """The base's tokenization for `dataset` (an EpisodeWindowDataset): see the module docstring."""
    new_state, new_action = dataset_normalizers(dataset, seq)
    if norm == "base":
        for name, new, old in (("state", new_state, base.state_norm), ("action", new_action, base.action_norm)):
            for emb in set(new.bounds) & set(old.bounds):
                _warn_outside(name, emb, new.bounds[emb], old.bounds[emb])
    seq = replace(seq, action_tokens=base.cfg.action_tokens)  # the base's action tokenizer sets the chunk slots
    names = sorted({e for st in dataset.stores for e in st.manifest["embodiments"]})
    embodiments = base.embodiments + [e for e in names if e not in base.embodiments]
    if len(embodiments) > base.vocab.max_embodiments:
        raise UsageError(f"{len(embodiments)} embodiments ({embodiments}) but the base's vocabulary has "
                         f"{base.vocab.max_embodiments} embodiment slots")  # fmt: skip
    frame_shape = base.frame_shape if base.image.input_key == "latents" else (*dataset.frame_size, 3)
    if base.image.input_key != "latents" and frame_shape[:2] != base.frame_shape[:2]:
        log.warning("frames are %s here and %s in pretraining: the patch grid differs (new patch positions start "
                    "untrained)", frame_shape[:2], base.frame_shape[:2])  # fmt: skip
    return SequenceBuilder(
        seq, text=base.text, actions=base.actions, image=base.image, vocab=base.vocab,
        state_norm=_merged(base.state_norm, new_state, norm), action_norm=_merged(base.action_norm, new_action, norm),
        embodiments=embodiments, cameras=dataset.cameras, frame_shape=frame_shape,
        state_dim=max(base.state_dim, dataset.state_dim), action_dim=max(base.action_dim, dataset.action_dim),
    )  # fmt: skip


def _warn_outside(name: str, emb: str, data: tuple, base: tuple) -> None:
    """finetune.norm=base: say where the new data's 1-99% range leaves the base's (those values clip to it)."""
    (lo, hi), (blo, bhi) = data, base
    tol = 0.01 * (bhi - blo)  # a hair's breadth (q01 of -1.0 against the base's -0.9999) is no news
    out = [i for i in range(min(len(lo), len(blo))) if lo[i] < blo[i] - tol[i] or hi[i] > bhi[i] + tol[i]]
    if out:
        log.warning("finetune.norm=base: %s dims %s of %r range over [%s] in the new data, beyond the base's [%s]: "
                    "values outside clip", name, out, emb, ", ".join(f"{lo[i]:.3g}..{hi[i]:.3g}" for i in out),
                    ", ".join(f"{blo[i]:.3g}..{bhi[i]:.3g}" for i in out))  # fmt: skip


def _merged(base: Normalizer, new: Normalizer, norm: str) -> Normalizer:
    """The base's statistics with the new data's added; for an embodiment both know, the new data's (norm=data) or
    the base's (norm=base)."""
    return Normalizer(_bounds(base) | _bounds(new) | (_bounds(base) if norm == "base" else {}))


def _bounds(norm: Normalizer) -> dict:
    return {emb: (lo.tolist(), hi.tolist()) for emb, (lo, hi) in norm.bounds.items()}


def adapt_model_config(base: ModelConfig, builder: SequenceBuilder) -> ModelConfig:
    """The base's architecture with room for the builder's state dimension, cameras and patches."""
    if builder.image.patch_dim() != base.patch_dim:
        raise UsageError(f"patches of {builder.image.patch_dim()} values here but {base.patch_dim} in the base: "
                         "fine-tune with the base's image tokenizer and patch size")  # fmt: skip
    return replace(base, state_dim=max(base.state_dim, builder.state_dim),
                   max_cameras=max(base.max_cameras, len(builder.cameras)),
                   max_patches=max(base.max_patches, builder.patches),
                   action_chunk_dim=max(base.action_chunk_dim, builder.cfg.stride * builder.action_dim))  # fmt: skip


def load_base_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy the base's weights into `model`: whole where shapes agree, the leading slice where the model's
    tensor is larger (new rows or columns keep their initialisation). Returns the names per outcome
    ("copied", "grown", "new"); a base tensor the model has no room for is a UsageError."""
    report: dict[str, list[str]] = {"copied": [], "grown": [], "new": []}
    with torch.no_grad():
        for name, param in model.state_dict().items():
            if name not in weights:
                report["new"].append(name)
                continue
            w = weights[name]
            if w.shape == param.shape:
                param.copy_(w)
                report["copied"].append(name)
            elif name == "action_in.weight":  # a chunk of other dimensions lays its values out anew: start afresh
                report["new"].append(name)
            elif name == "state_in.weight" and w.shape[0] == param.shape[0] and w.shape[1] <= param.shape[1]:
                base, new = w.shape[1] // 2, param.shape[1] // 2  # columns: [state (Ds), mask (Ds)]
                param[:, :base].copy_(w[:, :base])
                param[:, new : new + base].copy_(w[:, base:])
                report["grown"].append(name)
            elif w.dim() == param.dim() and all(a <= b for a, b in zip(w.shape, param.shape, strict=True)):
                param[tuple(slice(0, n) for n in w.shape)].copy_(w)
                report["grown"].append(name)
            else:
                raise UsageError(f"base weight {name} of shape {tuple(w.shape)} does not fit {tuple(param.shape)}")
    return report


def apply_mode(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Set what trains (see the module docstring); returns the model (with adapters injected for "lora")."""
    if cfg.mode == "full":
        return model
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("backbone.blocks."))
    if cfg.mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=LORA_TARGETS, lora_dropout=0.0)
        model = inject_adapter_in_model(lora, model)  # (which freezes every non-adapter parameter)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name or not name.startswith("backbone.blocks."))
    return model


def merge_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the model with every LoRA adapter merged into its base weight, under the plain model's
    parameter names (what an export holds). The model itself is left as it is."""
    from peft.tuners.lora import LoraLayer

    merged = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            delta = module.get_delta_weight("default")
            merged[f"{name}.weight"] = (base.weight + delta).detach().clone()
    out = {}
    for name, t in model.state_dict().items():
        if "lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        out[plain] = merged.get(plain, t)
    return out


def trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
