"""A tiny randomly initialised diffusers AutoencoderKL saved in a local folder: latent tests need no download."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VAE_DOWNSAMPLE = 2  # two resolution levels: latents are half the frame size
TINY_VAE_CHANNELS = 4


def make_tiny_vae(path: str | Path, seed: int = 0) -> Path:
    """Save an AutoencoderKL with ~44k parameters to `path` (save_pretrained) and return the path.

    The weights depend only on `seed`, and the global torch RNG is left as it was."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16),
            latent_channels=TINY_VAE_CHANNELS,
            layers_per_block=1,
            norm_num_groups=4,
            sample_size=32,
        )
    vae.save_pretrained(path)
    return Path(path)
