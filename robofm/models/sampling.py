"""Inference: the policy (decode an action chunk) and the world model (imagine future frames under actions).

Both take a batch shaped like collated EpisodeWindowDataset items with K observation steps: frames (or latents)
[B, C, K(+1), ...], state [B, K, Ds], state_mask, actions [B, K, s, Da] (the chunks after steps 0..K-2 are the
executed ones; the chunk of step K-1 is the one to predict or, for `imagine`, the first one to roll out),
action_mask, task and embodiment. Every path runs with a KV cache or without one; both give the same result
within float tolerance.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from torch import Tensor

from robofm.errors import UsageError
from robofm.models.backbone import KVCache
from robofm.models.diffusion import FrameDiffusion
from robofm.models.robofm import RobofmModel
from robofm.tokenization.layout import TokenMeta, Vocab
from robofm.tokenization.sequence import Sequence, SequenceBuilder


def _with_target_frame(batch: dict, builder: SequenceBuilder) -> dict:
    """The batch with K+1 frames (the builder's layout reads frame K only as a target; any values do)."""
    key = "patches" if "patches" in batch else builder.image.input_key
    x = batch[key]
    if x.shape[2] == batch["state"].shape[1]:
        x = torch.cat([x, torch.zeros_like(x[:, :, :1])], dim=2)
    return {**batch, key: x}


@torch.no_grad()
def predict_action_chunk(model: RobofmModel, builder: SequenceBuilder, batch: dict, *, temperature: float = 0.0,
                         generator: torch.Generator | None = None, use_cache: bool = True,
                         estimate: str = "mean", hide_past_actions: bool | None = None) -> Tensor:  # fmt: skip
    """The action chunk [B, s, Da] in robot units (padded dimensions 0) that follows the last observation.

    Decodes the last step's action slots one token at a time (greedy at temperature 0, else sampled), choosing
    only among action tokens (and EOA for a variable-length tokenizer, which ends the chunk); slots the action
    tokenizer leaves empty for these dimensions (binning: padded ones) stay PAD. estimate "mean" (the default)
    reads each slot as the expectation of its distribution given the tokens chosen before it, where the
    tokenizer's ids carry values (binning; FAST decodes its tokens either way): on the demo's held-out windows it
    halved the action MSE of the greedy tokens' bin centres, which pile up at the clipped extremes
    (benchmarks/RESULTS.md). "tokens" decodes the chosen tokens. hide_past_actions: predict without the earlier
    chunks in view (None: as the model was trained, `builder.hides_past_actions`)."""
    if estimate not in ("tokens", "mean"):
        raise UsageError(f"the action estimate must be tokens or mean, not {estimate!r}")
    device = next(model.parameters()).device
    hide = builder.hides_past_actions if hide_past_actions is None else hide_past_actions
    seq = builder.build(_with_target_frame(batch, builder), noisy_steps=(), hide_past_actions=hide).to(device)
    k = batch["state"].shape[1]
    lay = builder.layout((), k)
    slots = torch.as_tensor(lay.act_index[k - 1], device=device)  # (A,)
    ids, valid = seq.ids.clone(), seq.meta.valid.clone()
    vocab, tokenizer = builder.vocab, builder.actions
    empty = builder.empty_action_slots(batch["action_mask"]).to(device)  # (B, A)
    allowed = torch.zeros(vocab.size, dtype=torch.bool, device=device)
    allowed[vocab.action_offset :] = True
    allowed[Vocab.EOA] = tokenizer.variable_length
    done = torch.zeros(len(ids), dtype=torch.bool, device=device)
    probs = []  # per slot: the distribution over the tokenizer's ids
    cache = KVCache() if use_cache else None
    start = int(slots[0])
    for j, pos in enumerate(slots.tolist()):
        cur = _replace(seq, ids, valid)
        if cache is None:
            logits = model(cur.tokens(slice(0, pos))).logits[:, -1]
        else:
            new = slice(0, start) if j == 0 else slice(pos - 1, pos)
            logits = model(cur.tokens(new), cache).logits[:, -1]
        if estimate == "mean":  # only then is each slot's distribution read
            probs.append(torch.softmax(logits[:, vocab.action_offset :].float(), dim=-1).cpu())
        token = _choose(logits.float().masked_fill(~allowed, float("-inf")), temperature, generator)
        token = torch.where(empty[:, j] | done, torch.full_like(token, Vocab.PAD), token)
        ids[:, pos], valid[:, pos] = token, token != Vocab.PAD
        done |= token == Vocab.EOA
        if bool(done.all()):
            break
    norm = None
    if estimate == "mean" and len(probs) == len(slots):
        norm = tokenizer.expected(torch.stack(probs, dim=1), builder.cfg.stride, builder.action_dim)
    return _detokenize(builder, ids[:, slots].cpu(), batch["embodiment"], batch["action_mask"], norm)


def _replace(seq: Sequence, ids: Tensor, valid: Tensor) -> Sequence:
    return replace(seq, ids=ids, meta=TokenMeta(seq.meta.block, seq.meta.group, valid))


def _frame_output(model: RobofmModel, seq: Sequence, cache: KVCache | None, x_t: Tensor, t: Tensor) -> Tensor:
    """The frame head's output for the NOISY block of `seq` (its last tokens) at patches x_t and times t."""
    noisy = seq.noisy_index
    patches, level = seq.patches.clone(), seq.noise_level.clone()
    patches[:, noisy], level[:, noisy] = x_t, t
    full = replace(seq, patches=patches, noise_level=level)
    if cache is None:
        return model(full).frames.float()
    return model(full.tokens(slice(int(noisy[0]), None)), cache, append=False).frames.float()


def _choose(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def _detokenize(builder: SequenceBuilder, tokens: Tensor, embodiments: list[str], action_mask: Tensor,
                norm: Tensor | None = None) -> Tensor:  # fmt: skip
    """Action-slot ids [B, A] (or the normalized chunks `norm` [B, s, Da] already estimated) -> chunks [B, s, Da]
    in robot units."""
    if norm is None:
        norm = builder.actions.decode(builder.from_vocab(tokens), builder.cfg.stride, builder.action_dim)
    out = torch.stack([builder.action_norm.unnormalize(n, e) for n, e in zip(norm, embodiments, strict=True)])
    return out * action_mask[:, None, :]


@torch.no_grad()
def imagine(model: RobofmModel, builder: SequenceBuilder, diffusion: FrameDiffusion, batch: dict, actions: Tensor,
            *, sampler_steps: int = 10, generator: torch.Generator | None = None, use_cache: bool = True) -> Tensor:  # fmt: skip
    """Imagined patches [B, H, C, P, patch_dim] of the H frames after the context, under action chunks
    [B, H, s, Da] (robot units; actions[:, 0] follows the last context frame). Each frame is denoised in
    `sampler_steps` steps against the context, then appended as the next clean observation with its state
    hidden; beyond the builder's window the oldest step drops out. `builder.image.decode` and `to_uint8` turn the
    patches into images."""
    device = next(model.parameters()).device
    batch = _with_target_frame(batch, builder)
    x = batch["patches"] if "patches" in batch else builder.image.encode(batch[builder.image.input_key])
    k = batch["state"].shape[1]
    window = {
        "patches": list(x[:, :, :k].unbind(2)),  # per step (B, C, P, pd)
        "state": list(batch["state"].unbind(1)),
        "known": [torch.ones(len(x), dtype=torch.bool)] * k,
        "actions": list(batch["actions"][:, : k - 1].unbind(1)),
    }
    out = []
    for h in range(actions.shape[1]):
        steps = len(window["patches"])
        step_batch = {
            **{key: batch[key] for key in ("task", "embodiment", "state_mask", "action_mask", "camera_mask")},
            "patches": torch.stack([*window["patches"], window["patches"][-1]], dim=2),
            "state": torch.stack(window["state"], dim=1),
            "state_known": torch.stack(window["known"], dim=1),
            "actions": torch.stack([*window["actions"], actions[:, h]], dim=1),
        }
        seq = builder.build(step_batch, noisy_steps=(steps,), hide_past_actions=builder.hides_past_actions).to(device)
        cache = None
        if use_cache:  # the context once; each sampler step then runs only the NOISY block against it
            cache = KVCache()
            model(seq.tokens(slice(0, int(seq.noisy_index[0]))), cache)  # the NOISY block closes the sequence
        denoise = partial(_frame_output, model, seq, cache)
        x0 = diffusion.sample(denoise, tuple(seq.frame_x0.shape), sampler_steps, generator, device)
        x0 = diffusion.frame(x0, seq.frame_prev.to(device)).cpu()
        frame = x0.reshape(x0.shape[0], len(builder.cameras), builder.patches, -1)  # (B, C, P, pd)
        out.append(frame)
        window["patches"].append(frame)
        window["state"].append(torch.zeros_like(window["state"][-1]))
        window["known"].append(torch.zeros_like(window["known"][-1]))
        window["actions"].append(actions[:, h])
        if len(window["patches"]) > builder.cfg.window_len:
            for key in ("patches", "state", "known", "actions"):
                window[key].pop(0)
    return torch.stack(out, dim=1)
