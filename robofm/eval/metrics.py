"""Image metrics for imagined frames: mean squared error, PSNR and SSIM of channels-last images.

Images are [..., H, W, 3] (uint8 or float, values in [0, data_range]); every function returns one value per image,
shape [...]. SSIM follows Wang et al. (2004): an 11-tap Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, valid
(unpadded) filtering, the mean SSIM map averaged over channels. Images smaller than the window use the largest odd
window that fits (8x8 test frames get a 7-tap window).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from robofm.errors import UsageError


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape or a.ndim < 3:
        raise UsageError(f"images must be [..., H, W, C] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.double(), b.double()


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per image, [...] float64."""
    a, b = _pair(a, b)
    return (a - b).pow(2).mean(dim=(-3, -2, -1))


def psnr_from_mse(err: Tensor, data_range: float = 255.0) -> Tensor:
    """10 log10(data_range^2 / err) in dB; +inf where err is 0."""
    return 10 * torch.log10(data_range**2 / torch.as_tensor(err, dtype=torch.float64))


def psnr(a: Tensor, b: Tensor, data_range: float = 255.0) -> Tensor:
    """Peak signal-to-noise ratio per image in dB (+inf for identical images)."""
    return psnr_from_mse(mse(a, b), data_range)


def gaussian_window(size: int, sigma: float) -> Tensor:
    """The normalized 1-D Gaussian window [size], float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(a: Tensor, b: Tensor, data_range: float = 255.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:  # fmt: skip
    """Structural similarity per image, [...] float64 (1 for identical images)."""
    a, b = _pair(a, b)
    lead, (h, w, c) = a.shape[:-3], a.shape[-3:]
    size = min(window, h, w)
    size -= 1 - size % 2  # the largest odd window that fits
    g = gaussian_window(size, sigma)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, size, size)  # (C, 1, k, k): one filter per channel
    x = rearrange(a.reshape(-1, h, w, c), "n h w c -> n c h w")  # (N, C, H, W)
    y = rearrange(b.reshape(-1, h, w, c), "n h w c -> n c h w")  # (N, C, H, W)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).reshape(lead)


def finite_or_none(x: float) -> float | None:
    """A float JSON can hold: None for nan and +-inf."""
    return None if x is None or math.isnan(x) or math.isinf(x) else float(x)
