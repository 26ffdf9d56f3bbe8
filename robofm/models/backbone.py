"""The Transformer backbone: pre-norm decoder blocks with RMSNorm, SwiGLU, rotary positions from explicit position
ids, QK-norm and no biases. Attention is masked by the block-causal rule of `attends` through SDPA
with a boolean mask (portable default) or FlexAttention with a block mask; a KV cache serves inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from robofm.models.config import ModelConfig
from robofm.tokenization.layout import TokenMeta


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose weight takes the input's dtype: under bf16 autocast the fp32 weight would keep torch off
    its fused kernel (and make it warn on every call)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


def attends(q_block: Tensor, q_group: Tensor, k_block: Tensor, k_group: Tensor, k_valid: Tensor) -> Tensor:
    """The attention rule, on broadcastable tensors of query and key metadata (TokenMeta's fields): a query sees
    the valid clean keys of its own block and earlier ones, and the keys of its own NOISY group. No query ever
    sees a NOISY key of another group, so the clean stream is the same with or without NOISY blocks. A hidden
    action chunk (group <= -2) is seen, among clean queries, only by its own tokens: the policy then predicts
    without the past actions, and NOISY blocks still see every chunk up to theirs."""
    earlier = (k_group < 0) & (k_block <= q_block)
    sees_clean = earlier & ((k_group == -1) | (q_group >= 0) | (q_group == k_group))
    same_noisy = (q_group >= 0) & (q_group == k_group)
    return (sees_clean | same_noisy) & k_valid


def allowed(q: TokenMeta, k: TokenMeta) -> Tensor:
    """Boolean [B, Lq, Lk]: may query i attend to key j (the rule of `attends`)."""
    qb, qg = q.block[:, :, None], q.group[:, :, None]  # (B, Lq, 1)
    return attends(qb, qg, k.block[:, None, :], k.group[:, None, :], k.valid[:, None, :])  # (B, Lq, Lk)


def flex_block_mask(q: TokenMeta, k: TokenMeta):
    """The rule of `attends` as a FlexAttention BlockMask (computed block-sparse, never as an L x L tensor on
    GPU)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, qi, ki):
        return attends(q.block[b, qi], q.group[b, qi], k.block[b, ki], k.group[b, ki], k.valid[b, ki])

    (b, lq), lk = q.block.shape, k.block.shape[1]
    return create_block_mask(mask_mod, B=b, H=None, Q_LEN=lq, KV_LEN=lk, device=q.block.device)


@dataclass
class SplitMask:
    """The mask of a sequence laid out as a clean stream of c tokens and then n NOISY blocks of m tokens each
    (robofm.tokenization.layout.Layout), scored in two parts: clean queries against clean keys only ([B, c, c]),
    and each NOISY block's queries against the clean keys and its own ([B*n, m, c+m]). The rule of `attends` allows
    nothing else (no clean query sees a NOISY key, no NOISY block another), so the result equals one masked
    attention over all L tokens, with c^2 + n*m*(c+m) scores instead of L^2 (646 tokens of the demo: 40% fewer)."""

    c: int
    n: int
    clean: Tensor  # (B, 1, c, c)
    noisy: Tensor  # (B*n, 1, m, c+m)

    @staticmethod
    def of(meta: TokenMeta) -> SplitMask | None:
        """The split of a sequence that has the layout above (every sample alike), else None."""
        group = meta.group[0]
        c = int((group < 0).sum())
        n_tok = len(group) - c
        if n_tok == 0 or bool((group[:c] >= 0).any()):
            return None
        _, counts = torch.unique_consecutive(group[c:], return_counts=True)
        n, m = len(counts), int(counts[0])
        if bool((counts != m).any()):
            return None
        full = allowed(meta, meta)  # (B, L, L)
        b = full.shape[0]
        noisy_rows = full[:, c:].view(b, n, m, -1)  # (B, n, m, L)
        own = torch.stack([noisy_rows[:, i, :, c + i * m : c + (i + 1) * m] for i in range(n)], dim=1)  # (B, n, m, m)
        noisy = torch.cat([noisy_rows[..., :c], own], dim=-1).reshape(b * n, 1, m, c + m)
        return SplitMask(c, n, full[:, None, :c, :c], noisy)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q, k, v [B, H, L, hd] -> [B, H, L, hd]."""
        c, n = self.c, self.n
        b, h, length, hd = q.shape
        m = (length - c) // n
        clean = F.scaled_dot_product_attention(q[:, :, :c], k[:, :, :c], v[:, :, :c], attn_mask=self.clean)

        def per_block(x: Tensor) -> Tensor:  # (B, H, n*m, hd) -> (B*n, H, m, hd)
            return x.view(b, h, n, m, hd).transpose(1, 2).reshape(b * n, h, m, hd)

        def with_context(x: Tensor) -> Tensor:  # each block's keys: the clean ones, then its own
            ctx = x[:, :, :c].unsqueeze(1).expand(b, n, h, c, hd).reshape(b * n, h, c, hd)
            return torch.cat([ctx, per_block(x[:, :, c:])], dim=2)

        y = F.scaled_dot_product_attention(per_block(q[:, :, c:]), with_context(k), with_context(v),
                                           attn_mask=self.noisy)  # fmt: skip
        y = y.view(b, n, h, m, hd).transpose(1, 2).reshape(b, h, n * m, hd)
        return torch.cat([clean, y], dim=2)


def rotary(pos: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin [B, 1, L, head_dim/2] for integer positions [B, L]."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angles = pos.float()[:, None, :, None] * freqs  # (B, 1, L, hd/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)  # rotate-half convention, in fp32 for accuracy under autocast
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, with their mask metadata."""

    def __init__(self) -> None:
        self.k: list[Tensor | None] = []
        self.v: list[Tensor | None] = []
        self.meta: TokenMeta | None = None

    def __len__(self) -> int:
        return 0 if self.meta is None else self.meta.block.shape[1]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps=cfg.norm_eps)  # QK-norm keeps attention logits bounded
        self.k_norm = RMSNorm(self.head_dim, eps=cfg.norm_eps)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask, cache: KVCache | None, layer: int,
                append: bool) -> Tensor:  # fmt: skip
        q, k, v = rearrange(self.qkv(x), "b l (n h d) -> n b h l d", n=3, h=self.heads)  # (3, B, H, L, hd)
        q, k = apply_rotary(self.q_norm(q), *rope), apply_rotary(self.k_norm(k), *rope)
        if cache is not None:
            if layer < len(cache.k):  # keys of earlier tokens come first, as in the metadata the mask was built on
                k, v = torch.cat([cache.k[layer], k], dim=2), torch.cat([cache.v[layer], v], dim=2)
                if append:
                    cache.k[layer], cache.v[layer] = k, v
            elif append:
                cache.k.append(k)
                cache.v.append(v)
        if isinstance(mask, SplitMask | Tensor):
            y = _sdpa(q, k, v, mask)
        else:
            from torch.nn.attention.flex_attention import flex_attention

            y = flex_attention(q, k, v, block_mask=mask)
        return self.out(rearrange(y, "b h l d -> b l (h d)"))  # (B, L, D)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: SplitMask | Tensor) -> Tensor:
    """Masked SDPA. On the CPU a bf16 q, k, v (autocast) is attended in fp32 and the result cast back: torch's CPU
    flash kernel runs its forward and backward about 1.7x faster in fp32 than in bf16 at these shapes
    (benchmarks/RESULTS.md, "Training throughput"), and the matmuls around it stay in bf16."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            return _sdpa(q.float(), k.float(), v.float(), mask).to(q.dtype)
    if isinstance(mask, SplitMask):
        return mask.attend(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


@dataclass
class NoisyCondition:
    """What modulates the NOISY tokens of a forward pass: their positions `index` [N] (n blocks of equal size, in
    order) and one condition vector per block and sample, `c` [B, n, D] (its diffusion time and action chunk)."""

    index: Tensor
    c: Tensor

    def modulate(self, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        """x [B, L, D] with its NOISY tokens x * (1 + scale) + shift (shift, scale [B, n, D], per block)."""
        b, n = self.c.shape[:2]
        noisy = x[:, self.index].view(b, n, -1, x.shape[-1])  # (B, n, C*P, D)
        return x.index_copy(1, self.index, (noisy * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2))


class Block(nn.Module):
    """Pre-norm attention and SwiGLU. With cfg.adaln, the NOISY tokens (and only they) are modulated from their
    condition (adaLN, DiT): shift and scale after each norm and a gate on each residual branch, all zero at
    initialisation, so a new model starts as the unconditioned one and clean tokens never change."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.ada = nn.Linear(cfg.dim, 6 * cfg.dim) if cfg.adaln else None

    def forward(self, x: Tensor, rope, mask, cache: KVCache | None, layer: int, append: bool,
                cond: NoisyCondition | None = None) -> Tensor:  # fmt: skip
        if cond is None or self.ada is None:
            x = x + self.attn(self.attn_norm(x), rope, mask, cache, layer, append)
            return x + self.mlp(self.mlp_norm(x))
        zero = torch.zeros_like(cond.c)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(cond.c)).chunk(6, dim=-1)  # (B, n, D) each
        h = self.attn(cond.modulate(self.attn_norm(x), shift1, scale1), rope, mask, cache, layer, append)
        x = x + cond.modulate(h, zero, gate1)
        h = self.mlp(cond.modulate(self.mlp_norm(x), shift2, scale2))
        return x + cond.modulate(h, zero, gate2)


class Backbone(nn.Module):
    """Decoder blocks and the final norm. `forward(x [B, L, D], pos [B, L], meta)` -> [B, L, D]; `cond`
    modulates the NOISY tokens in every block (cfg.adaln).

    With a cache, the new tokens attend to the cached ones and to each other; `append=True` adds them to the
    cache (clean context), `append=False` leaves it unchanged (a NOISY block being denoised)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, x: Tensor, pos: Tensor, meta: TokenMeta, cache: KVCache | None = None,
                append: bool = True, cond: NoisyCondition | None = None) -> Tensor:  # fmt: skip
        keys = meta if cache is None or cache.meta is None else cache.meta.cat(meta)
        if self.cfg.attention == "flex":
            mask = flex_block_mask(meta, keys)
        else:
            mask = (SplitMask.of(meta) if cache is None else None) or allowed(meta, keys)
        rope = rotary(pos, self.cfg.dim // self.cfg.heads, self.cfg.rope_theta)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache, i, append, cond)
        if cache is not None and append:
            cache.meta = keys
        return self.norm(x)
