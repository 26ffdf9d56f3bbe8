"""The pretraining objective: L = w_action L_action + w_text L_text + w_frame L_frame + w_z L_z, in one forward
pass (no token attends to a NOISY block, so the token losses see only the clean stream). The losses call only
`model(seq)` and read the ModelOutput it returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from robofm.models.diffusion import FrameDiffusion
from robofm.models.robofm import RobofmModel
from robofm.objectives.next_token import token_losses
from robofm.tokenization.layout import OBS
from robofm.tokenization.sequence import IGNORE, Sequence


@dataclass
class ObjectiveConfig:
    """Loss weights; the frame diffusion (flow | ddpm), its logit-normal time density, what the frame head
    predicts (velocity | x0) and what x0 is (frame | delta from the previous frame; see
    robofm.models.diffusion); context_noise: the
    largest std of Gaussian noise added to context (OBS) patches, drawn uniformly per sample, which makes long
    imagined rollouts (that feed back their own imperfect frames) drift less; sampler_steps at inference."""

    action_weight: float = 1.0
    text_weight: float = 0.0
    frame_weight: float = 1.0
    z_loss_weight: float = 1e-4
    frame_diffusion: str = "flow"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    frame_prediction: str = "velocity"
    frame_target: str = "frame"
    context_noise: float = 0.0
    sampler_steps: int = 10


class Objective:
    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.cfg = cfg
        self.diffusion = FrameDiffusion(cfg.frame_diffusion, cfg.logit_mean, cfg.logit_std, cfg.frame_prediction,
                                        cfg.frame_target)  # fmt: skip

    def noised(self, seq: Sequence, generator: torch.Generator | None = None) -> tuple[Sequence, Tensor]:
        """The sequence with its NOISY blocks filled (one time per sample and block), and the frame target.
        Without a generator each sample draws from its own sample_key, so a sample gets the same noise whatever
        the batch, worker or rank it lands in (resumed and distributed runs reproduce single-process ones)."""
        b, n = seq.frame_x0.shape[:2]
        blocks = int(seq.noisy_block.max()) + 1 if n else 0
        gens = [generator] * b if generator is not None else [
            torch.Generator().manual_seed(int(k) & (2**63 - 1)) for k in seq.sample_key.tolist()]  # fmt: skip
        t = torch.stack([self.diffusion.draw_times((blocks,), g) for g in gens])
        noise = torch.stack([torch.randn(seq.frame_x0.shape[1:], generator=g) for g in gens])
        device = seq.frame_x0.device
        t, noise = t.to(device)[:, seq.noisy_block], noise.to(device)  # (B, N), (B, N, patch_dim)
        x0 = self.diffusion.clean(seq.frame_x0, seq.frame_prev)
        x_t, target = self.diffusion.add_noise(x0, t, noise)
        patches, level = seq.patches.clone(), seq.noise_level.clone()
        patches[:, seq.noisy_index], level[:, seq.noisy_index] = x_t.to(patches.dtype), t
        if self.cfg.context_noise > 0:
            obs = (seq.modality == OBS)[..., None]
            for i, g in enumerate(gens):
                std = float(torch.rand((), generator=g)) * self.cfg.context_noise
                patches[i] += obs[i] * std * torch.randn(patches.shape[1:], generator=g).to(device)
        return dataclasses.replace(seq, patches=patches, noise_level=level), target

    def __call__(self, model: RobofmModel, seq: Sequence, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Losses (total, action, text, frame, z) and action_accuracy, each a scalar tensor."""
        seq, frame_target = self.noised(seq, generator)
        output = model(seq)
        readout = seq.token_readout
        targets, kinds = seq.targets[:, readout], seq.target_kind[:, readout]  # (B, M), as output.logits
        sel = targets != IGNORE
        out = token_losses(output.logits[sel], targets[sel], kinds[sel])
        if len(seq.noisy_index):
            noisy = seq.noisy_index
            head = output.frames.float()  # (B, N, patch_dim)
            pred = self.diffusion.model_target(head, seq.patches[:, noisy].float(), seq.noise_level[:, noisy])
            err = (pred - frame_target.float()).pow(2).mean(-1)
            valid = seq.frame_valid.float()
            out["frame"] = (err * valid).sum() / valid.sum().clamp(min=1)
        else:
            out["frame"] = output.hidden.new_zeros((), dtype=torch.float32)
        c = self.cfg
        out["total"] = (c.action_weight * out["action"] + c.text_weight * out["text"] + c.frame_weight * out["frame"]
                        + c.z_loss_weight * out["z"])  # fmt: skip
        return out
