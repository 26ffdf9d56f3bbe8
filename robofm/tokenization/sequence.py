"""SequenceBuilder: a batch of EpisodeWindowDataset items -> one interleaved token sequence per sample.

It normalizes and tokenizes (text, state, actions, frames), places every token on the shared `Layout`, and
gives the next-token targets, the clean patches that NOISY blocks must predict, and the attention metadata.
It runs as the DataLoader's collate_fn, so tokenization happens in the loader's worker processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import default_collate

from robofm.errors import UsageError
from robofm.tokenization.layout import Layout, TokenMeta, Vocab
from robofm.tokenizers.action import EMPTY, END, ActionTokenizer

IGNORE = -100  # target of a position with no token loss
TARGET_TEXT, TARGET_ACTION = 1, 2


@dataclass
class Sequence:
    """Model inputs and training targets of B samples of L tokens (one Layout).

    ids [B, L] token ids (PAD at continuous positions); modality, camera, patch [B, L] embedding rows;
    patches [B, L, patch_dim] patch values at OBS/NOISY positions (NOISY: filled by the frame objective);
    state [B, L, 2*Ds] normalized state and its dimension mask at STATE positions; noise_level [B, L] the
    diffusion time of NOISY tokens; pos [B, L] rotary positions; meta: attention metadata.
    targets [B, L]: the token id position i must predict (IGNORE: none); target_kind [B, L] text or action.
    frame_x0 [B, N, patch_dim] the clean patches NOISY tokens predict, at noisy_index [N] (flattened NOISY
    blocks), noisy_block [N] which block each belongs to; frame_valid [B, N] (False: missing camera);
    frame_prev [B, N, patch_dim] the same patches one step earlier (the frame each NOISY block follows).
    actions [B, K, 2*s*Da] each step's action chunk, normalized (step-major, padded dims 0), then its dimension
    mask: what conditions the NOISY block of the frame it leads to (never an input of the clean stream).
    sample_key [B] int64 seeds each sample's training noise (the dataset's key, or random without one).
    """

    ids: Tensor
    modality: Tensor
    camera: Tensor
    patch: Tensor
    patches: Tensor
    state: Tensor
    noise_level: Tensor
    pos: Tensor
    meta: TokenMeta
    targets: Tensor
    target_kind: Tensor
    frame_x0: Tensor
    frame_valid: Tensor
    frame_prev: Tensor
    noisy_index: Tensor
    noisy_block: Tensor
    actions: Tensor
    sample_key: Tensor

    @property
    def token_readout(self) -> Tensor:
        """Boolean [L]: the positions whose next token is text or action (the same in every sample: the layout's),
        where the model reads out token logits."""
        return self.target_kind[0] > 0

    def to(self, device: torch.device | str) -> Sequence:
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        moved = {k: (TokenMeta(*(t.to(device) for t in v.astuple())) if k == "meta" else v.to(device))
                 for k, v in moved.items()}  # fmt: skip
        return Sequence(**moved)

    def tokens(self, index: slice | Tensor) -> Sequence:
        """Tokens `index` of every sample (inference: a prefix, or one new token); targets are dropped."""
        cut = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        per_token = ("ids", "modality", "camera", "patch", "patches", "state", "noise_level", "pos", "targets",
                     "target_kind")  # fmt: skip
        cut = {k: v[:, index] if k in per_token else v for k, v in cut.items()}
        cut["meta"] = TokenMeta(*(t[:, index] for t in self.meta.astuple()))
        return Sequence(**cut)

    def __getitem__(self, index: slice) -> Sequence:
        """Samples `index` of the batch (for gradient accumulation)."""
        cut = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        cut = {k: v if k in ("noisy_index", "noisy_block") else
               TokenMeta(*(t[index] for t in v.astuple())) if k == "meta" else v[index] for k, v in cut.items()}  # fmt: skip
        return Sequence(**cut)


@dataclass
class SequenceConfig:
    """The shape of one sample's sequence.

    noisy: which frames get a NOISY target block: "all" (frames 1..K), "last" (frame K), or an int m (m random
    frames of 1..K, drawn per batch). text_len: task-text slots (longer texts are cut). action_tokens: slots per
    action chunk for FAST (0: binning, where it is stride x action_dim). state_dropout: probability that a step's
    state is hidden (trains the "unknown state" input that imagined rollouts use). past_action_dropout:
    probability that a training sample hides its action chunks from every later clean token, so that its policy
    predicts each chunk from observations, state and text alone (the copycat answer: a smooth expert's last chunk
    nearly predicts its next one); its NOISY blocks still see every chunk. A model trained with it > 0 predicts with
    past actions hidden unless told otherwise (`build(hide_past_actions=...)`).
    """

    window_len: int = 4
    stride: int = 2
    noisy: str | int = "all"
    text_len: int = 32
    action_tokens: int = 0
    state_dropout: float = 0.0
    past_action_dropout: float = 0.0


class SequenceBuilder:
    """Collate EpisodeWindowDataset items into a `Sequence` (see the module docstring).

    text, actions, image: tokenizers (robofm.tokenizers); state_norm, action_norm: per-embodiment Normalizers;
    embodiments: names in id order; cameras: camera names in item order; frame_shape: (H, W, 3) frames or
    (C, h, w) latents as stored; state_dim, action_dim: the model's (padded) maxima."""

    def __init__(self, cfg: SequenceConfig, *, text, actions: ActionTokenizer, image, state_norm, action_norm, vocab: Vocab,
                 embodiments: list[str], cameras: list[str], frame_shape: tuple[int, ...], state_dim: int,
                 action_dim: int) -> None:  # fmt: skip
        self.cfg, self.text, self.actions, self.image, self.vocab = cfg, text, actions, image, vocab
        self.state_norm, self.action_norm = state_norm, action_norm
        self.embodiments, self.cameras, self.frame_shape = list(embodiments), list(cameras), tuple(frame_shape)
        self.state_dim, self.action_dim = state_dim, action_dim
        if len(self.embodiments) > vocab.max_embodiments:
            raise UsageError(f"{len(self.embodiments)} embodiments but the vocabulary has {vocab.max_embodiments} slots")
        self.action_len = actions.slots(cfg.stride, action_dim)
        gh, gw = image.grid(self.frame_shape)
        self.patches = gh * gw
        self._text_cache: dict[str, list[int]] = {}

    def layout(self, noisy_steps: tuple[int, ...], steps: int | None = None) -> Layout:
        return Layout(steps or self.cfg.window_len, len(self.cameras), self.patches, self.cfg.text_len,
                      self.action_len, tuple(sorted(noisy_steps)))  # fmt: skip

    def noisy_steps(self, generator: torch.Generator | None = None) -> tuple[int, ...]:
        k, noisy = self.cfg.window_len, self.cfg.noisy
        if noisy == "all":
            return tuple(range(1, k + 1))
        if noisy == "last":
            return (k,)
        m = int(noisy)
        if not 0 <= m <= k:
            raise UsageError(f"sequence.noisy={m} must be between 0 and window_len={k}, or 'all' or 'last'")
        return tuple(int(i) + 1 for i in torch.randperm(k, generator=generator)[:m].sort().values)

    def __call__(self, items: list[dict]) -> Sequence:
        """The DataLoader collate_fn."""
        return self.build(default_collate(items))

    # ------------------------------------------------------------------------------------------------ build

    def build(self, batch: dict, noisy_steps: tuple[int, ...] | None = None, generator: torch.Generator | None = None,
              hide_past_actions: bool | None = None) -> Sequence:  # fmt: skip
        """A collated batch (EpisodeWindowDataset items) -> Sequence. Inference may give K other than the
        configured window (from the shape of "state"), precomputed "patches" [B, C, K+1, P, patch_dim] instead of
        frames, and "state_known" [B, K] (False: the step's state is hidden, as for an imagined frame).
        hide_past_actions: True or False for every sample; None draws it per sample with past_action_dropout."""
        batch = {**batch, **{key: _pad_last(batch[key], dim) for key, dim in (
            ("state", self.state_dim), ("state_mask", self.state_dim), ("actions", self.action_dim),
            ("action_mask", self.action_dim))}}  # fmt: skip
        k = batch["state"].shape[1]
        if generator is None and "key" in batch:  # the batch's random choices follow from its samples' keys
            generator = torch.Generator().manual_seed(int(torch.as_tensor(batch["key"])[0]) & (2**63 - 1))
        lay = self.layout(self.noisy_steps(generator) if noisy_steps is None else noisy_steps, k)
        b, length = len(batch["task"]), len(lay)
        ids = torch.full((b, length), Vocab.PAD, dtype=torch.long)
        valid = torch.ones(b, length, dtype=torch.bool)
        targets = torch.full((b, length), IGNORE, dtype=torch.long)
        target_kind = torch.zeros(b, length, dtype=torch.long)
        ids[:, 0] = Vocab.BOS
        ids[:, 1] = torch.tensor([self.vocab.embodiment(self._embodiment_id(e)) for e in batch["embodiment"]])

        text, text_valid = self.text_tokens(batch["task"])
        ids[:, lay.text_index], valid[:, lay.text_index] = text, text_valid
        targets[:, lay.text_index - 1] = torch.where(text_valid, text, IGNORE)
        target_kind[:, lay.text_index - 1] = TARGET_TEXT

        act, act_valid, act_loss, chunks = self.action_tokens(batch["actions"], batch["action_mask"],
                                                              batch["embodiment"])  # fmt: skip
        ids[:, lay.act_index], valid[:, lay.act_index] = act, act_valid  # (B, K, A)
        targets[:, lay.act_index - 1] = torch.where(act_loss, act, IGNORE)
        target_kind[:, lay.act_index - 1] = TARGET_ACTION

        patches = torch.zeros(b, length, self.image.patch_dim())
        x = batch["patches"] if "patches" in batch else self.image.encode(batch[self.image.input_key])  # (B, C, K+1, P, pd)
        cams = batch["camera_mask"]  # (B, C)
        obs = lay.obs_index.reshape(k, len(self.cameras), self.patches)  # (K, C, P)
        patches[:, obs] = x[:, :, :k].transpose(1, 2)  # (B, K, C, P, patch_dim)
        valid[:, obs] = cams[:, None, :, None]
        noisy_steps = [int(g) for g in lay.group[lay.noisy_index[:, 0]]] if len(lay.noisy_index) else []
        frame_x0 = x[:, :, noisy_steps].transpose(1, 2).flatten(1, 3)  # (B, n*C*P, patch_dim)
        frame_prev = x[:, :, [t - 1 for t in noisy_steps]].transpose(1, 2).flatten(1, 3)
        frame_valid = cams[:, None, :, None].expand(b, len(noisy_steps), -1, self.patches).flatten(1)
        valid[:, lay.noisy_index.reshape(-1)] = frame_valid

        state = torch.zeros(b, length, 2 * self.state_dim)
        state[:, lay.state_index] = self.state_inputs(batch["state"], batch["state_mask"], batch["embodiment"],
                                                      batch.get("state_known"), generator)  # fmt: skip

        group = torch.from_numpy(lay.group).expand(b, -1)
        hide = self._hidden_actions(b, hide_past_actions, generator)
        if bool(hide.any()):  # the chunk of step t becomes group -2-t in the samples that hide it
            group = group.clone()
            own = -2 - torch.arange(k)[:, None].expand(k, self.action_len)  # (K, A)
            group[:, lay.act_index] = torch.where(hide[:, None, None], own, group[:, lay.act_index])
        meta = TokenMeta(torch.from_numpy(lay.block).expand(b, -1), group, valid)
        return Sequence(
            ids=ids,
            modality=torch.from_numpy(lay.modality).expand(b, -1),
            camera=torch.from_numpy(lay.camera).expand(b, -1),
            patch=torch.from_numpy(lay.patch).expand(b, -1),
            patches=patches,
            state=state,
            noise_level=torch.zeros(b, length),
            pos=torch.from_numpy(lay.pos).expand(b, -1),
            meta=meta,
            targets=targets,
            target_kind=target_kind,
            frame_x0=frame_x0,
            frame_valid=frame_valid,
            frame_prev=frame_prev,
            noisy_index=torch.from_numpy(lay.noisy_index.reshape(-1)),
            noisy_block=torch.arange(len(noisy_steps)).repeat_interleave(len(self.cameras) * self.patches),
            actions=chunks,
            sample_key=torch.as_tensor(batch["key"]) if "key" in batch else torch.randint(-(2**62), 2**62, (b,)),
        )

    def _hidden_actions(self, b: int, hide: bool | None, generator: torch.Generator | None) -> Tensor:
        """bool [B]: the samples whose policy may not see their past action chunks."""
        p = self.cfg.past_action_dropout
        if hide is not None:
            return torch.full((b,), bool(hide))
        if p <= 0:
            return torch.zeros(b, dtype=torch.bool)
        return torch.rand(b, generator=generator) < p

    @property
    def hides_past_actions(self) -> bool:
        """Whether inference hides past action chunks by default: it does for a model trained to predict without
        them (past_action_dropout > 0)."""
        return self.cfg.past_action_dropout > 0

    def _embodiment_id(self, name: str) -> int:
        try:
            return self.embodiments.index(name)
        except ValueError:
            raise UsageError(f"embodiment {name!r} is not one of the model's {self.embodiments}") from None

    def text_tokens(self, tasks: list[str]) -> tuple[Tensor, Tensor]:
        """ids [B, text_len] (task text, EOT, PAD) and their validity."""
        rows = []
        for task in tasks:
            if task not in self._text_cache:
                ids = [self.vocab.text_offset + i for i in self.text.encode(task)[: self.cfg.text_len - 1]]
                self._text_cache[task] = ids + [Vocab.EOT]
            rows.append(self._text_cache[task])
        ids = torch.full((len(tasks), self.cfg.text_len), Vocab.PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != Vocab.PAD

    def state_inputs(self, state: Tensor, state_mask: Tensor, embodiments: list[str], known: Tensor | None = None,
                     generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        """[B, K, 2*Ds]: normalized state (padded dims 0) and the dimension mask; hidden steps are all zero
        (those not `known`, and in training a state_dropout fraction)."""
        norm = torch.stack([self.state_norm.normalize(s, e) for s, e in zip(state, embodiments, strict=True)])
        mask = state_mask[:, None, :].expand_as(norm).float()
        out = torch.cat([norm * mask, mask], dim=-1)
        if known is not None:
            out = out * known[..., None]
        if self.cfg.state_dropout > 0 and known is None:
            keep = torch.rand(out.shape[:2], generator=generator) >= self.cfg.state_dropout
            out = out * keep[..., None]
        return out

    def action_tokens(self, actions: Tensor, action_mask: Tensor, embodiments: list[str]) -> tuple[Tensor, ...]:
        """ids, valid (may be attended to), loss (is a target) [B, K, A] of each step's action chunk: the action
        tokenizer's slots (binning: one per step and dimension, padded dimensions PAD; FAST: the chunk's tokens,
        EOA, then PAD), PAD where it leaves a slot empty. An episode without actions: NO_ACTION in slot 0, no loss.
        Also the chunks' values [B, K, 2*s*Da]: normalized, then the dimension mask (all 0 without actions)."""
        b, k = actions.shape[:2]
        has = action_mask.any(dim=1)
        norm = torch.stack([self.action_norm.normalize(a, e) if h else torch.zeros_like(a)
                            for a, e, h in zip(actions, embodiments, has, strict=True)])  # fmt: skip
        dims = action_mask[:, None, :].expand(b, k, -1).flatten(0, 1)  # (B*K, Da)
        slots = self.actions.encode(norm.flatten(0, 1), dims)  # (B*K, A): token ids, EMPTY or END
        ids = self.to_vocab(slots).reshape(b, k, self.action_len)
        ids[~has] = Vocab.PAD
        ids[~has, :, 0] = Vocab.NO_ACTION
        loss = ids != Vocab.PAD
        loss[~has] = False
        mask = (action_mask & has[:, None])[:, None, None, :].expand_as(norm).float()  # (B, K, s, Da)
        chunks = torch.cat([(norm * mask).flatten(2), mask.flatten(2)], dim=-1)  # (B, K, 2*s*Da)
        return ids, ids != Vocab.PAD, loss, chunks

    def empty_action_slots(self, action_mask: Tensor) -> Tensor:
        """bool [B, A]: the slots of an action chunk that no chunk of these dimensions (action_mask [B, Da]) fills,
        which stay PAD (binning: those of padded dimensions)."""
        return self.actions.empty_slots(_pad_last(action_mask, self.action_dim), self.cfg.stride)

    def to_vocab(self, slots: Tensor) -> Tensor:
        """The action tokenizer's slot values (ids, EMPTY, END) as vocabulary ids (action ids, PAD, EOA)."""
        ids = torch.where(slots == END, Vocab.EOA, Vocab.PAD)
        return torch.where(slots >= 0, slots + self.vocab.action_offset, ids)

    def from_vocab(self, ids: Tensor) -> Tensor:
        """The inverse of `to_vocab`: vocabulary ids of action slots as the action tokenizer's slot values."""
        slots = torch.where(ids == Vocab.EOA, END, EMPTY)
        return torch.where(ids >= self.vocab.action_offset, ids - self.vocab.action_offset, slots)


def _pad_last(x: Tensor, n: int) -> Tensor:
    """x padded with zeros (False) along its last dimension to n entries (an embodiment with fewer dims)."""
    if x.shape[-1] > n:
        raise UsageError(f"got {x.shape[-1]} dimensions where the model has at most {n}")
    return torch.nn.functional.pad(x, (0, n - x.shape[-1])) if x.shape[-1] < n else x
