"""PSNR and SSIM against known values: identical images, known error and noise levels, constant and shifted images."""

from __future__ import annotations

import math

import pytest
import torch

from robofm.errors import UsageError
from robofm.eval.metrics import finite_or_none, gaussian_window, mse, psnr, psnr_from_mse, ssim


def textured(seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_identical_images_give_infinite_psnr_and_ssim_one():
    a = textured()
    assert math.isinf(float(psnr(a, a)))
    torch.testing.assert_close(ssim(a, a), torch.tensor(1.0, dtype=torch.float64))
    assert finite_or_none(float(psnr(a, a))) is None


def test_psnr_follows_its_formula():
    a = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    b = torch.full((2, 8, 8, 3), 10, dtype=torch.uint8)
    torch.testing.assert_close(mse(a, b), torch.full((2,), 100.0, dtype=torch.float64))
    expected = 10 * math.log10(255**2 / 100)  # 28.13 dB
    torch.testing.assert_close(psnr(a, b), torch.full((2,), expected, dtype=torch.float64))
    assert float(psnr_from_mse(100.0)) == pytest.approx(expected)


def test_psnr_of_gaussian_noise_matches_its_level():
    a = torch.full((256, 256, 3), 128.0)
    for sigma in (2.0, 8.0):
        noisy = a + sigma * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
        assert float(psnr(a, noisy)) == pytest.approx(20 * math.log10(255 / sigma), abs=0.05)


def test_ssim_of_constant_images_is_the_luminance_term():
    """With no variance, SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1), C1 = (0.01 * 255)^2."""
    a, b = torch.full((16, 16, 3), 100.0), torch.full((16, 16, 3), 150.0)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)
    assert float(ssim(a, b)) == pytest.approx(expected, rel=1e-9)


def test_ssim_falls_as_an_image_shifts_and_is_symmetric():
    base = torch.nn.functional.avg_pool2d(textured(1, 64).permute(2, 0, 1)[None].float(), 5, 1, 2)[0].permute(1, 2, 0)
    scores = [float(ssim(base, torch.roll(base, shift, dims=1))) for shift in (0, 1, 3)]
    assert scores[0] == pytest.approx(1.0) and scores[0] > scores[1] > scores[2]
    assert float(ssim(base, torch.roll(base, 1, 1))) == pytest.approx(float(ssim(torch.roll(base, 1, 1), base)))
    assert float(ssim(base, 255 - base)) < 0  # an inverted image is anti-correlated


def test_ssim_batches_and_small_frames():
    a = torch.stack([textured(i, 8) for i in range(3)]).reshape(3, 1, 8, 8, 3)
    b = torch.stack([textured(i + 5, 8) for i in range(3)]).reshape(3, 1, 8, 8, 3)
    out = ssim(a, b)  # 8x8 frames use a 7-tap window
    assert out.shape == (3, 1)
    torch.testing.assert_close(out[1, 0], ssim(a[1, 0], b[1, 0]))
    assert gaussian_window(11, 1.5).sum() == pytest.approx(1.0)


def test_mismatched_images_are_a_usage_error():
    with pytest.raises(UsageError, match="one shape"):
        psnr(textured(0, 8), textured(0, 16))
