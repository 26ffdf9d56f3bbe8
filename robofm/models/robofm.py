"""RobofmModel: embeddings of the interleaved tokens, the backbone, a token head and a frame head."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robofm.models.backbone import Backbone, KVCache
from robofm.models.config import ModelConfig
from robofm.models.layout import ACTION, MODALITIES, NOISY, OBS, SPECIAL, STATE, TEXT


def time_features(t: Tensor, dim: int = 256) -> Tensor:
    """Sinusoidal features [..., dim] of diffusion times t in [0, 1] (scaled to 0..1000 like image diffusion)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class RobofmModel(nn.Module):
    """forward(seq, cache=None, append=True) -> hidden states [B, L, D]; token_logits(h) and frame_output(h)
    read them. Discrete tokens enter through the shared embedding table; patches and state through linear
    projections; every token gets its modality embedding, image tokens their camera and patch-position
    embeddings, and NOISY tokens the embedding of their diffusion time."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.modality_emb = nn.Embedding(MODALITIES, d)
        self.camera_emb = nn.Embedding(cfg.max_cameras, d)
        self.patch_emb = nn.Embedding(cfg.max_patches, d)
        self.patch_in = nn.Linear(cfg.patch_dim, d, bias=False)
        self.state_in = nn.Linear(2 * cfg.state_dim, d, bias=False)
        self.time_mlp = nn.Sequential(nn.Linear(256, d, bias=False), nn.SiLU(), nn.Linear(d, d, bias=False))
        self.backbone = Backbone(cfg)
        self.token_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.frame_head = nn.Linear(d, cfg.patch_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """All initialisation in one place: normal(0.02) for weights, output projections scaled by depth,
        and a zero frame head (DiT): the first frame predictions are zero velocity."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)
        for block in self.backbone.blocks:
            nn.init.normal_(block.attn.out.weight, std=0.02 / math.sqrt(2 * self.cfg.depth))
            nn.init.normal_(block.mlp.down.weight, std=0.02 / math.sqrt(2 * self.cfg.depth))
        nn.init.zeros_(self.frame_head.weight)

    def embed(self, seq) -> Tensor:
        """[B, L, D] input embeddings of a Sequence (or of a slice of one with the same fields)."""
        m = seq.modality
        discrete = ((m == SPECIAL) | (m == TEXT) | (m == ACTION))[..., None]
        image = ((m == OBS) | (m == NOISY))[..., None]
        x = self.tok_emb(seq.ids) * discrete + self.modality_emb(m)
        x = x + self.patch_in(seq.patches) + self.state_in(seq.state) * (m == STATE)[..., None]
        x = x + (self.camera_emb(seq.camera) + self.patch_emb(seq.patch)) * image
        noisy = m == NOISY
        if noisy.any():
            x = x + self.time_mlp(time_features(seq.noise_level)) * noisy[..., None]
        return x

    def forward(self, seq, cache: KVCache | None = None, append: bool = True) -> Tensor:
        return self.backbone(self.embed(seq), seq.pos, seq.meta, cache, append)

    def token_logits(self, h: Tensor) -> Tensor:
        return self.token_head(h)

    def frame_output(self, h: Tensor) -> Tensor:
        return self.frame_head(h)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
