"""Next-frame diffusion: noising clean patches for training and denoising them at inference.

Schedules and samplers are diffusers': flow matching (the default) trains on x_t = (1 - t) x0 + t eps with the
velocity eps - x0 as target, t drawn logit-normal, and samples with FlowMatchEulerDiscreteScheduler; "ddpm" trains
epsilon prediction on DDPMScheduler's schedule and samples with DDIMScheduler. The model sees the time as t in
[0, 1] either way (the DDPM step index / 1000).

Two choices shape what the frame head learns (flow only):
- prediction "velocity" (the design's default, docs/design.md): the head outputs eps - x0 directly. "x0": the head outputs the
  clean x0 and the velocity (x_t - x0_hat) / t is formed from it, so the loss is unchanged but the network
  regresses an image instead of noise; for high-dimensional pixel patches this learns much faster (Li & He,
  "Back to Basics: Let Denoising Generative Models Denoise", 2025).
- target "frame": x0 is the next frame's patches. "delta": x0 is the change from the previous frame (the last
  context frame), which is near zero for most patches; with x0 prediction and the zero-initialised head an
  untrained model imagines exactly the copy-last-frame baseline and training moves it from there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robofm.errors import UsageError

TRAIN_STEPS = 1000


MIN_T = 0.05  # x0 prediction divides by t: in training, below this the velocity is formed at MIN_T (as JiT clamps)


def describe(settings: dict) -> str:
    """FrameDiffusion.settings() in a few words for tables: "flow, x0 prediction of the delta"."""
    return f"{settings['kind']}, {settings['prediction']} prediction of the {settings['target']}"


class FrameDiffusion:
    """kind: "flow" or "ddpm"; logit_mean/std: the logit-normal time density (flow); prediction: "velocity" or
    "x0" (what the frame head outputs); target: "frame" or "delta" (what x0 is)."""

    def __init__(self, kind: str = "flow", logit_mean: float = 0.0, logit_std: float = 1.0,
                 prediction: str = "velocity", target: str = "frame") -> None:  # fmt: skip
        if kind not in ("flow", "ddpm"):
            raise UsageError(f"objective.frame_diffusion must be flow or ddpm, not {kind!r}")
        if prediction not in ("velocity", "x0") or target not in ("frame", "delta"):
            raise UsageError(f"objective.frame_prediction must be velocity or x0 (not {prediction!r}) and "
                             f"objective.frame_target frame or delta (not {target!r})")  # fmt: skip
        if kind == "ddpm" and prediction == "x0":
            raise UsageError("objective.frame_prediction=x0 is for frame_diffusion=flow (ddpm predicts epsilon)")
        self.kind, self.logit_mean, self.logit_std = kind, logit_mean, logit_std
        self.prediction, self.target = prediction, target
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

    def settings(self) -> dict:
        """What a checkpoint records to rebuild this diffusion (`FrameDiffusion(**settings)`)."""
        return {"kind": self.kind, "logit_mean": self.logit_mean, "logit_std": self.logit_std,
                "prediction": self.prediction, "target": self.target}  # fmt: skip

    def clean(self, frame: Tensor, previous: Tensor) -> Tensor:
        """The x0 the diffusion models for next-frame patches `frame` after patches `previous`."""
        return frame - previous if self.target == "delta" else frame

    def frame(self, x0: Tensor, previous: Tensor) -> Tensor:
        """Next-frame patches from a sampled x0 (the inverse of `clean`)."""
        return x0 + previous if self.target == "delta" else x0

    def model_target(self, out: Tensor, x_t: Tensor, t: Tensor, min_t: float = MIN_T) -> Tensor:
        """The frame head's output `out` as the quantity `add_noise`'s target regresses (velocity or epsilon).
        The sampler passes a tiny min_t so that its last step lands on the predicted x0 exactly."""
        if self.prediction == "velocity":
            return out
        return (x_t - out) / t[..., None].clamp(min=min_t).to(out.dtype)

    def sample(self, denoise: Callable[[Tensor, Tensor], Tensor], shape: tuple[int, ...], steps: int,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:  # fmt: skip
        """x0 [*shape] from pure noise in `steps` sampler steps; denoise(x_t, t in [0, 1]) -> the frame head's
        output."""
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

        if self.kind == "flow":
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=TRAIN_STEPS)
        else:
            scheduler = DDIMScheduler.from_config(self.train_scheduler.config)
        scheduler.set_timesteps(steps, device=device)
        x = torch.randn(shape, generator=generator).to(device)
        for timestep in scheduler.timesteps:
            t = torch.full(shape[:-1], float(timestep) / TRAIN_STEPS, device=device)
            out = self.model_target(denoise(x, t), x, t, min_t=1e-6)
            x = scheduler.step(out, timestep, x).prev_sample
        return x
