"""Next-frame diffusion: noising clean patches for training and denoising them at inference.

Schedules and samplers are diffusers': flow matching (the default) trains on x_t = (1 - t) x0 + t eps with the
velocity eps - x0 as target, t drawn logit-normal, and samples with FlowMatchEulerDiscreteScheduler; "ddpm" trains
epsilon prediction on DDPMScheduler's schedule and samples with DDIMScheduler. The model sees the time as t in
[0, 1] either way (the DDPM step index / 1000).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robofm.errors import UsageError

TRAIN_STEPS = 1000


class FrameDiffusion:
    """kind: "flow" or "ddpm"; logit_mean/std: the logit-normal time density (flow)."""

    def __init__(self, kind: str = "flow", logit_mean: float = 0.0, logit_std: float = 1.0) -> None:
        if kind not in ("flow", "ddpm"):
            raise UsageError(f"objective.frame_diffusion must be flow or ddpm, not {kind!r}")
        self.kind, self.logit_mean, self.logit_std = kind, logit_mean, logit_std
        if kind == "ddpm":
            from diffusers import DDPMScheduler  # diffusers takes seconds to import: only when used

            self.train_scheduler = DDPMScheduler(num_train_timesteps=TRAIN_STEPS)

    def draw_times(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Diffusion times in [0, 1] (flow: logit-normal; ddpm: uniform over the discrete steps)."""
        n = int(torch.Size(shape).numel())
        if self.kind == "flow":  # logit-normal: sigmoid of a normal draw (as diffusers' SD3 training samples it)
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator))
        else:
            t = torch.randint(0, TRAIN_STEPS, (n,), generator=generator).float() / TRAIN_STEPS
        return t.reshape(shape)

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Noised patches x_t and the regression target, for x0, noise [..., N, D] and times t [..., N]."""
        if self.kind == "flow":
            s = t[..., None].to(x0.dtype)
            return (1 - s) * x0 + s * noise, noise - x0
        steps = (t * TRAIN_STEPS).round().long().clamp(0, TRAIN_STEPS - 1)
        x_t = self.train_scheduler.add_noise(x0.flatten(0, -2), noise.flatten(0, -2), steps.flatten())
        return x_t.reshape(x0.shape), noise

    def sample(self, denoise: Callable[[Tensor, Tensor], Tensor], shape: tuple[int, ...], steps: int,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:  # fmt: skip
        """x0 [*shape] from pure noise in `steps` sampler steps; denoise(x_t, t in [0, 1]) -> the model output."""
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

        if self.kind == "flow":
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=TRAIN_STEPS)
        else:
            scheduler = DDIMScheduler.from_config(self.train_scheduler.config)
        scheduler.set_timesteps(steps, device=device)
        x = torch.randn(shape, generator=generator).to(device)
        for timestep in scheduler.timesteps:
            out = denoise(x, torch.full(shape[:-1], float(timestep) / TRAIN_STEPS, device=device))
            x = scheduler.step(out, timestep, x).prev_sample
        return x
