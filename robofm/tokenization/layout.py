"""The token layout of one sample, the vocabulary it draws from, and the attention metadata of its tokens
(docs/design.md, "Tokens" and "Attention").

    [BOS] [EMB] [text ... EOT PAD ...]
    for t in 0 .. K-1:  OBS_t (C x P patches)  STATE_t (1)  ACT_t (A slots)  [NOISY_t+1 (C x P patches)]

A layout is fixed by (K, C, P, text slots, action slots, which steps get a NOISY block), so it is built once and
shared by every sample of a batch; what differs per sample (padding, missing cameras, action-free episodes) is
in the per-token `valid` flags. Positions: NOISY_t+1 takes the position ids of OBS_t+1 (for t+1 = K, of the OBS
block that would follow ACT_K-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

# modality ids (learned embedding rows)
SPECIAL, TEXT, ACTION, OBS, STATE, NOISY = range(6)
MODALITIES = 6


@dataclass
class TokenMeta:
    """What the attention mask needs to know of each token, all [B, L]:
    block  int: a clean token sees clean keys whose block is <= its own (equal block: bidirectional)
    group  int: -1 for clean tokens; a NOISY block's tokens share a group id t+1 >= 1 and see each other;
           -2-t for the action chunk of step t when past actions are hidden from the policy (seen by its own
           tokens and by NOISY blocks, by no other clean token: SequenceConfig.past_action_dropout)
    valid  bool: False for padding and missing cameras, which no query may attend to
    A NOISY token's block is the block of the last clean token it may see (the end of its action chunk).
    """

    block: Tensor
    group: Tensor
    valid: Tensor

    def cat(self, other: TokenMeta) -> TokenMeta:
        return TokenMeta(*(torch.cat([a, b], dim=1) for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.block, self.group, self.valid


@dataclass(frozen=True)
class Vocab:
    """One id space for special, embodiment, text and action tokens: [specials | EMB x E | text | action]."""

    text_size: int
    action_size: int
    max_embodiments: int = 16
    PAD = 0
    BOS = 1
    EOT = 2  # end of the task text
    NO_ACTION = 3  # the action chunk of an episode without actions
    EOA = 4  # end of a variable-length (FAST) action chunk
    SPECIALS = 5

    def embodiment(self, index: int) -> int:
        return self.SPECIALS + index

    @property
    def text_offset(self) -> int:
        return self.SPECIALS + self.max_embodiments

    @property
    def action_offset(self) -> int:
        return self.text_offset + self.text_size

    @property
    def size(self) -> int:
        return self.action_offset + self.action_size


@dataclass(frozen=True)
class Layout:
    """Per-token arrays [L] of one sample's sequence and the index arrays of each part: the clean stream (BOS, EMB,
    text, then OBS_t, STATE_t, ACT_t per step), then the NOISY blocks in step order. Positions are explicit ids and
    the mask follows the metadata, so the order changes no output; NOISY blocks come last so that attention can
    score the clean stream apart from them (robofm.models.backbone.SplitMask)."""

    steps: int  # K
    cameras: int  # C
    patches: int  # P per camera and frame
    text_len: int
    action_len: int  # A slots per action chunk
    noisy_steps: tuple[int, ...]  # steps (1..K) whose frame gets a NOISY block

    @cached_property
    def _built(self) -> dict[str, np.ndarray]:
        k, cp, a = self.steps, self.cameras * self.patches, self.action_len
        modality, block, group, pos, camera, patch = [], [], [], [], [], []
        index = {"text": [], "obs": [], "state": [], "act": [], "noisy": []}
        next_pos, next_block = 0, 0
        pending = []  # NOISY blocks: (block, group, positions)

        def put(mod, blk, grp, p, cam=0, pt=0):
            modality.append(mod), block.append(blk), group.append(grp), pos.append(p), camera.append(cam)
            patch.append(pt)
            return len(modality) - 1

        def causal(mod):
            nonlocal next_pos, next_block
            i = put(mod, next_block, -1, next_pos)
            next_pos, next_block = next_pos + 1, next_block + 1
            return i

        causal(SPECIAL), causal(SPECIAL)  # BOS, EMB
        index["text"] = [causal(TEXT) for _ in range(self.text_len)]
        for t in range(k):
            obs = next_pos + np.arange(cp)
            index["obs"].append([put(OBS, next_block, -1, p, c, q) for c, q, p in _grid(self.cameras, self.patches, obs)])
            next_pos, next_block = next_pos + cp, next_block + 1
            index["state"].append(causal(STATE))
            index["act"].append([causal(ACTION) for _ in range(a)])
            if t + 1 in self.noisy_steps:  # sees up to ACT_t's last slot; at the positions OBS_t+1 takes (frame K: would take)
                pending.append((next_block - 1, t + 1, next_pos + np.arange(cp)))
        for blk, grp, positions in pending:  # after the clean stream, which none of them is seen by
            index["noisy"].append([put(NOISY, blk, grp, p, c, q) for c, q, p in _grid(self.cameras, self.patches, positions)])
        arrays = dict(modality=modality, block=block, group=group, pos=pos, camera=camera, patch=patch)
        out = {name: np.asarray(v, dtype=np.int64) for name, v in arrays.items()}
        widths = {"text": None, "state": None, "obs": cp, "act": a, "noisy": cp}
        for name, idx in index.items():
            arr = np.asarray(idx, dtype=np.int64)
            out[f"{name}_index"] = arr if widths[name] is None else arr.reshape(len(idx), widths[name])
        return out

    def __getattr__(self, name: str) -> np.ndarray:  # the built arrays read as attributes: layout.obs_index
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._built[name]
        except KeyError:
            raise AttributeError(name) from None

    def __len__(self) -> int:
        return len(self.modality)

    def noisy_block(self, step: int) -> dict[str, np.ndarray]:
        """Metadata [C*P] of a NOISY block predicting frame `step` (1..K): block, group, pos, camera, patch."""
        ref = Layout(self.steps, self.cameras, self.patches, self.text_len, self.action_len, (step,))
        idx = ref.noisy_index[0]
        return {name: getattr(ref, name)[idx] for name in ("block", "group", "pos", "camera", "patch")}


def _grid(cameras: int, patches: int, positions: np.ndarray):
    """(camera, patch, position) of each token of an image block, camera-major."""
    for c in range(cameras):
        for q in range(patches):
            yield c, q, int(positions[c * patches + q])
