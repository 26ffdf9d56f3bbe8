"""Next-token losses on the clean stream: cross-entropy per target kind, and the logit z-loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robofm.tokenization.sequence import TARGET_ACTION, TARGET_TEXT


def token_losses(logits: Tensor, targets: Tensor, kinds: Tensor) -> dict[str, Tensor]:
    """logits [N, V], targets [N], kinds [N] of the positions that have a target.

    Returns action and text cross-entropy (0 where a kind has no positions), the z-loss mean(logsumexp^2) that
    keeps the softmax normaliser near 1, and the action-token accuracy."""
    logits = logits.float()
    ce = F.cross_entropy(logits, targets, reduction="none")
    out = {}
    for name, kind in (("action", TARGET_ACTION), ("text", TARGET_TEXT)):
        sel = kinds == kind
        out[name] = ce[sel].mean() if sel.any() else ce.new_zeros(())
    out["z"] = torch.logsumexp(logits, dim=-1).pow(2).mean() if len(logits) else logits.new_zeros(())
    act = kinds == TARGET_ACTION
    out["action_accuracy"] = (logits[act].argmax(-1) == targets[act]).float().mean() if act.any() else ce.new_zeros(())
    return out
