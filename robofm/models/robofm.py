"""RobofmModel: embeddings of the interleaved tokens, the backbone, a token head and a frame head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robofm.models.backbone import Backbone, KVCache, NoisyCondition
from robofm.models.config import ModelConfig
from robofm.tokenization.layout import ACTION, MODALITIES, NOISY, OBS, SPECIAL, STATE, TEXT


def time_features(t: Tensor, dim: int = 256) -> Tensor:
    """Sinusoidal features [..., dim] of diffusion times t in [0, 1] (scaled to 0..1000 like image diffusion)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


@dataclass
class ModelOutput:
    """What one forward pass gives for the tokens of a Sequence (or of a slice of one).

    hidden [B, L, D]: the backbone's final hidden states
    logits [B, M, V]: the token head at the M positions whose next token is text or action (seq.token_readout)
    frames [B, N, patch_dim]: the frame head at the N NOISY tokens, in sequence order (seq.noisy_index's)
    """

    hidden: Tensor
    logits: Tensor
    frames: Tensor


class RobofmModel(nn.Module):
    """forward(seq, cache=None, append=True) -> ModelOutput: the hidden states and both heads' outputs where they
    are read, so a loss (or a DDP/FSDP wrapper) needs only forward. Discrete tokens enter through the shared embedding table; patches and state through linear
    projections; every token gets its modality embedding, image tokens their camera and patch-position
    embeddings, and NOISY tokens the embedding of their diffusion time. With cfg.prev_frame_input a NOISY token also
    gets the projection of the patch it changes (the same patch of the frame before, seq.frame_prev), as DIAMOND
    stacks the last frame with the noisy one: the motion it must predict is then a change of its own input, not
    something to find by attention."""

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
        self.action_in = nn.Linear(2 * cfg.action_chunk_dim, d, bias=False) if cfg.adaln else None
        self.prev_patch_in = nn.Linear(cfg.patch_dim, d, bias=False) if cfg.prev_frame_input else None
        self.backbone = Backbone(cfg)
        self.token_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.frame_head = nn.Linear(d, cfg.patch_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """All initialisation in one place: normal(0.02) for weights, output projections scaled by depth,
        a zero frame head (DiT): the first frame predictions are zero velocity; and zero NOISY modulations
        (adaLN-Zero's zero init, here of the offsets from identity)."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)
        for block in self.backbone.blocks:
            nn.init.normal_(block.attn.out.weight, std=0.02 / math.sqrt(2 * self.cfg.depth))
            nn.init.normal_(block.mlp.down.weight, std=0.02 / math.sqrt(2 * self.cfg.depth))
        nn.init.zeros_(self.frame_head.weight)
        for block in self.backbone.blocks:
            if block.ada is not None:
                nn.init.zeros_(block.ada.weight)
                nn.init.zeros_(block.ada.bias)

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
            if self.prev_patch_in is not None:
                x = self._add_prev_patches(x, seq, noisy[0])
        return x

    def _add_prev_patches(self, x: Tensor, seq, noisy: Tensor) -> Tensor:
        """x with each NOISY token's previous patch projected in. seq.frame_prev holds every NOISY token's, in
        sequence order, so a slice of a sequence (inference) must hold all of its NOISY tokens or none."""
        rows = noisy.nonzero().squeeze(1)  # (N,): one layout for the whole batch
        if len(rows) != seq.frame_prev.shape[1]:
            raise ValueError(f"a slice with {len(rows)} of the sequence's {seq.frame_prev.shape[1]} NOISY tokens")
        return x.index_add(1, rows, self.prev_patch_in(seq.frame_prev).to(x.dtype))

    def forward(self, seq, cache: KVCache | None = None, append: bool = True) -> ModelOutput:
        """With a cache, the tokens of `seq` attend to the cached ones too; append=True adds them to the cache."""
        noisy = seq.modality[0] == NOISY  # (L,): one layout for the whole batch
        cond = self.noisy_condition(seq, noisy) if self.cfg.adaln and noisy.any() else None
        h = self.backbone(self.embed(seq), seq.pos, seq.meta, cache, append, cond)  # (B, L, D)
        return ModelOutput(h, self.token_head(h[:, seq.token_readout]), self.frame_head(h[:, noisy]))

    def noisy_condition(self, seq, noisy: Tensor) -> NoisyCondition:
        """Per NOISY block: the embedding of its diffusion time plus the projection of the action chunk that leads
        to its frame (chunk t for NOISY_t+1: seq.actions, normalized values and their dimension mask)."""
        index = noisy.nonzero().squeeze(1)  # (N,)
        group = seq.meta.group[0, index]  # (N,): the frame each NOISY token predicts, 1..K
        steps, counts = torch.unique_consecutive(group, return_counts=True)  # (n,): blocks in sequence order
        first = index[torch.cumsum(counts, 0) - counts]  # (n,): the first token of each block
        chunks = seq.actions[:, steps - 1]  # (B, n, 2 * s * Da)
        c = self.time_mlp(time_features(seq.noise_level[:, first])) + self.action_in(chunks)  # (B, n, D)
        return NoisyCondition(index, c)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
