"""Image tokenizers: a window's frames into patch tokens and back. See docs/design.md, "Tokens".

Two kinds share one interface (`input_key`, `patch_dim`, `grid`, `encode`, `decode`, `to_uint8`, `save`):
  pixel   uint8 frames [..., H, W, 3] of the store, scaled to [-1, 1] and cut into p x p patches
  latent  float16 latents [..., C, h, w] a diffusers AutoencoderKL produced at conversion time, cut into
          p x p patches; the VAE itself (a local folder) only runs to convert and to look at predictions
Patches are numbered row-major (patch 0 is the top-left block, patch 1 the one to its right).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

from robofm.errors import UsageError

CONFIG = "image_tokenizer.json"


def _check_patches(patches: Tensor, n: int, dim: int) -> None:
    if patches.shape[-2:] != (n, dim):
        raise UsageError(f"expected patches [..., {n}, {dim}], got shape {tuple(patches.shape)}")


class PixelTokenizer:
    """Frames at store resolution, scaled to [-1, 1] (x / 127.5 - 1), in p x p patches of p*p*3 values."""

    input_key = "frames"  # the EpisodeWindowDataset item it reads

    def __init__(self, patch_size: int = 8) -> None:
        if patch_size < 1:
            raise UsageError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size

    def patch_dim(self) -> int:
        return self.patch_size**2 * 3

    def grid(self, frame_shape) -> tuple[int, int]:
        """Patches per column and per row of frames of shape (H, W, 3)."""
        h, w, _ = frame_shape
        p = self.patch_size
        if h % p or w % p:
            raise UsageError(f"frames of {h}x{w} do not divide into {p}x{p} patches: convert with a --resolution "
                             f"divisible by {p} or choose another patch size")  # fmt: skip
        return h // p, w // p

    def encode(self, x: Tensor) -> Tensor:
        """uint8 frames [..., H, W, 3] -> float32 patches [..., N, p*p*3] in [-1, 1], N = (H/p) * (W/p)."""
        if x.dtype != torch.uint8:
            raise UsageError(f"PixelTokenizer.encode takes uint8 frames, got {x.dtype}")
        self.grid(x.shape[-3:])
        p = self.patch_size
        x = rearrange(x, "... (h p) (w q) c -> ... (h w) (p q c)", p=p, q=p)  # (..., N, p*p*3)
        return x.float() / 127.5 - 1

    def decode(self, patches: Tensor, frame_shape) -> Tensor:
        """Inverse of encode: float patches [..., N, p*p*3] -> float32 frames [..., H, W, 3] in [-1, 1]."""
        gh, gw = self.grid(frame_shape)
        _check_patches(patches, gh * gw, self.patch_dim())
        p = self.patch_size
        return rearrange(patches.float(), "... (h w) (p q c) -> ... (h p) (w q) c", h=gh, p=p, q=p)  # (..., H, W, 3)

    def to_uint8(self, x: Tensor) -> Tensor:
        """Decoded frames in [-1, 1] -> uint8 frames (values outside [-1, 1], as predictions have, are clamped)."""
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def save(self, directory: str | Path) -> None:
        _save(directory, {"kind": "pixel", "patch_size": self.patch_size, "vae_path": None})


class LatentTokenizer:
    """Latents of a diffusers AutoencoderKL (a local save_pretrained folder; nothing is downloaded), stored
    multiplied by the VAE's scaling_factor, in p x p patches of p*p*C values.

    The VAE runs on the device and in the dtype it is moved to (`tokenizer.vae.to(...)`); CPU float32 by default.
    """

    input_key = "latents"

    def __init__(self, vae_path: str | Path, patch_size: int = 2) -> None:
        from diffusers import AutoencoderKL  # imported here: it takes seconds, and pixel tokens never need it

        self.vae_path, self.patch_size = Path(vae_path), patch_size
        if not (self.vae_path / "config.json").is_file():
            raise UsageError(f"{self.vae_path}: no AutoencoderKL there (config.json is missing); "
                             "the latent tokenizer needs a local folder written by save_pretrained")  # fmt: skip
        try:  # low_cpu_mem_usage=False: the faster path needs accelerate, and without it diffusers warns
            vae = AutoencoderKL.from_pretrained(self.vae_path, local_files_only=True, low_cpu_mem_usage=False)
        except Exception as e:
            raise UsageError(f"{self.vae_path}: cannot load a diffusers AutoencoderKL: {e}") from e
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)

    def patch_dim(self) -> int:
        return self.patch_size**2 * self.latent_channels

    def grid(self, latent_shape) -> tuple[int, int]:
        """Patches per column and per row of latents of shape (C, h, w)."""
        c, h, w = latent_shape
        p = self.patch_size
        if c != self.latent_channels:
            raise UsageError(f"latents have {c} channels but the VAE at {self.vae_path} makes {self.latent_channels}")
        if h % p or w % p:
            raise UsageError(f"latents of {h}x{w} do not divide into {p}x{p} patches: choose another patch size "
                             "or a frame --resolution whose latents divide")  # fmt: skip
        return h // p, w // p

    def encode(self, latents: Tensor) -> Tensor:
        """float16/32 latents [..., C, h, w] -> float32 patches [..., N, p*p*C], N = (h/p) * (w/p)."""
        self.grid(latents.shape[-3:])
        p = self.patch_size
        return rearrange(latents.float(), "... c (h p) (w q) -> ... (h w) (p q c)", p=p, q=p)  # (..., N, p*p*C)

    def decode(self, patches: Tensor, latent_shape) -> Tensor:
        """Inverse of encode: patches [..., N, p*p*C] -> float32 latents [..., C, h, w]."""
        gh, gw = self.grid(latent_shape)
        _check_patches(patches, gh * gw, self.patch_dim())
        p = self.patch_size
        return rearrange(patches.float(), "... (h w) (p q c) -> ... c (h p) (w q)", h=gh, p=p, q=p)  # (..., C, h, w)

    @torch.no_grad()
    def encode_frames(self, frames: Tensor) -> Tensor:
        """uint8 frames [B, H, W, 3] -> float16 latents [B, C, h, w]: the posterior's mean (deterministic, so a
        conversion is reproducible) times scaling_factor."""
        vae = self.vae
        x = rearrange(frames, "b h w c -> b c h w").to(vae.device, vae.dtype) / 127.5 - 1  # (B, 3, H, W)
        z = vae.encode(x).latent_dist.mean * self.scaling_factor  # (B, C, h, w)
        return z.to("cpu", torch.float16)

    @torch.no_grad()
    def decode_frames(self, latents: Tensor) -> Tensor:
        """Latents [B, C, h, w] (scaled as stored) -> uint8 frames [B, H, W, 3]."""
        vae = self.vae
        x = vae.decode(latents.to(vae.device, vae.dtype) / self.scaling_factor).sample  # (B, 3, H, W)
        x = ((x.float() + 1) * 127.5).round().clamp(0, 255).to("cpu", torch.uint8)
        return rearrange(x, "b c h w -> b h w c")  # (B, H, W, 3)

    def to_uint8(self, latents: Tensor) -> Tensor:
        """Latents [..., C, h, w] -> uint8 frames [..., H, W, 3], through the VAE's decoder."""
        lead = latents.shape[:-3]
        frames = self.decode_frames(latents.reshape(-1, *latents.shape[-3:]))  # (B, H, W, 3)
        return frames.reshape(*lead, *frames.shape[1:])

    def save(self, directory: str | Path) -> None:
        _save(directory, {"kind": "latent", "patch_size": self.patch_size, "vae_path": str(self.vae_path)})


def build_image_tokenizer(
    kind: str = "pixel", patch_size: int | None = None, vae_path: str | Path | None = None
) -> PixelTokenizer | LatentTokenizer:
    """A tokenizer by kind: "pixel" (patch size 8 by default) or "latent" (needs vae_path; patch size 2)."""
    if kind == "pixel":
        return PixelTokenizer(patch_size or 8)
    if kind == "latent":
        if vae_path is None:
            raise UsageError("the latent image tokenizer needs vae_path: a local AutoencoderKL folder")
        return LatentTokenizer(vae_path, patch_size or 2)
    raise UsageError(f"unknown image tokenizer {kind!r}: use pixel or latent")


def _save(directory: str | Path, config: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(json.dumps(config, indent=1))


def load_image_tokenizer(directory: str | Path) -> PixelTokenizer | LatentTokenizer:
    """The tokenizer that `save(directory)` wrote (the VAE itself is loaded again from its vae_path)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise UsageError(f"{path} is missing: no image tokenizer was saved in {directory}")
    return build_image_tokenizer(**json.loads(path.read_text()))
