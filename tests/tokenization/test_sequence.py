"""The SequenceBuilder: targets and shapes, NOISY subsets, mixed embodiments, action-free data, FAST slots, and a
saved tokenization that tokenizes alike."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from robofm.objectives.objective import Objective, ObjectiveConfig
from robofm.tokenization.build import load_sequence_builder, save_sequence_builder
from robofm.tokenization.layout import Vocab
from robofm.tokenization.sequence import IGNORE, TARGET_ACTION
from tests.models.conftest import batch_of, make_builder, make_model, make_store


def test_sequence_targets_and_shapes(tiny):
    ds, builder = tiny
    seq = builder.build(batch_of(ds, 2), noisy_steps=(1, 3))
    lay = builder.layout((1, 3))
    assert seq.ids.shape == (2, len(lay)) and seq.frame_x0.shape == (2, 2 * 2 * 4, builder.image.patch_dim())
    act = lay.act_index
    # the token before each action slot predicts it; binning: stride x dims slots per step, step-major
    assert torch.equal(seq.targets[:, act - 1], seq.ids[:, act])
    assert (seq.target_kind[:, act - 1] == TARGET_ACTION).all()
    assert (seq.ids[:, act] >= builder.vocab.action_offset).all()
    # NOISY blocks predict the clean patches of frames 1 and 3
    x = builder.image.encode(batch_of(ds, 2)["frames"])  # (B, C, K+1, P, pd)
    torch.testing.assert_close(seq.frame_x0[:, :8], x[:, :, 1].flatten(1, 2))
    torch.testing.assert_close(seq.frame_x0[:, 8:], x[:, :, 3].flatten(1, 2))


def test_noisy_subsets(tiny):
    ds, builder = tiny
    for noisy, blocks in (("all", 3), ("last", 1), (2, 2), (0, 0)):
        builder.cfg.noisy = noisy
        seq = builder.build(batch_of(ds, 1), generator=torch.Generator().manual_seed(0))
        assert len(seq.noisy_index) == blocks * 2 * 4, noisy
    builder.cfg.noisy = "all"


def test_mixed_embodiments_pad_state_and_actions(tmp_path):
    arm = make_store(tmp_path / "arm", n=2, state_dim=3, action_dim=2, embodiment="arm")
    big = make_store(tmp_path / "big", n=2, state_dim=5, action_dim=4, embodiment="big", cameras=("front",))
    ds, builder = make_builder([arm, big])
    assert (builder.state_dim, builder.action_dim, builder.embodiments) == (5, 4, ["arm", "big"])
    items = [ds.read_window(0, ds.episodes[0][0], 0), ds.read_window(1, ds.episodes[1][0], 0)]
    batch = default_collate(items)
    seq = builder.build(batch)
    lay = builder.layout(builder.noisy_steps())
    slots = seq.ids[:, lay.act_index].reshape(2, 3, 2, 4)  # (B, K, s, Da): the arm's dims 2, 3 are padding
    assert (slots[0, ..., 2:] == Vocab.PAD).all() and (slots[0, ..., :2] != Vocab.PAD).all()
    assert (slots[1] != Vocab.PAD).all()
    assert (seq.targets[0, lay.act_index.reshape(3, 2, 4)[..., 2:] - 1] == IGNORE).all()
    assert not seq.meta.valid[0, lay.act_index.reshape(3, 2, 4)[..., 2:]].any()
    state = seq.state[:, lay.state_index]  # (B, K, 2*Ds): values, then the dimension mask
    assert state[0, :, 5:].sum(-1).eq(3).all() and state[1, :, 5:].sum(-1).eq(5).all()
    assert (state[0, :, 3:5] == 0).all()
    assert not seq.frame_valid[1].view(3, 2, 4)[:, 1].any()  # "big" has no wrist camera: no frame loss there
    model = make_model(builder).train()
    out = Objective(ObjectiveConfig())(model, seq)
    out["total"].backward()
    assert torch.isfinite(out["total"]) and out["action"] > 0


def test_action_free_episodes_get_no_action_token_and_no_action_loss(tmp_path):
    ds, builder = make_builder(make_store(tmp_path / "video", n=2, with_action=False))
    seq = builder.build(batch_of(ds, 2))
    lay = builder.layout(builder.noisy_steps())
    assert (seq.ids[:, lay.act_index[:, 0]] == Vocab.NO_ACTION).all()
    assert (seq.ids[:, lay.act_index[:, 1:]] == Vocab.PAD).all()
    assert not (seq.target_kind == TARGET_ACTION).logical_and(seq.targets != IGNORE).any()
    out = Objective(ObjectiveConfig())(make_model(builder), seq)
    assert out["action"] == 0 and out["frame"] > 0


def test_builder_save_load_gives_the_same_sequence(tiny, tmp_path):
    ds, builder = tiny
    save_sequence_builder(builder, tmp_path / "tok")
    loaded = load_sequence_builder(tmp_path / "tok")
    a, b = builder.build(batch_of(ds, 2)), loaded.build(batch_of(ds, 2))
    for name in ("ids", "patches", "state", "pos", "targets"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_fast_chunks_fit_their_slots_and_end_with_eoa(fast):
    ds, builder = fast
    seq = builder.build(batch_of(ds, 4))
    slots = seq.ids[:, builder.layout(builder.noisy_steps()).act_index]  # (B, K, A)
    assert builder.actions.truncated_chunks == 0
    ends = (slots == Vocab.EOA).float().argmax(-1)
    assert ((slots == Vocab.EOA).sum(-1) == 1).all() and (ends >= 1).all()
    assert ((slots >= builder.vocab.action_offset).sum(-1) == ends).all()  # the tokens, then EOA, then PAD


@pytest.mark.parametrize("kind", ["binning", "fast"])
def test_action_slots_to_vocabulary_and_back_are_inverse(tiny, fast, kind):
    ds, builder = tiny if kind == "binning" else fast
    seq = builder.build(batch_of(ds, 2))
    ids = seq.ids[:, builder.layout(builder.noisy_steps()).act_index].flatten(0, 1)  # (B*K, A)
    assert torch.equal(builder.to_vocab(builder.from_vocab(ids)), ids)


def test_past_action_dropout_hides_whole_samples_and_follows_their_keys(tiny):
    ds, builder = tiny
    batch = batch_of(ds, 3)
    lay = builder.layout(builder.noisy_steps())
    act = torch.as_tensor(lay.act_index)  # (K, A)
    assert (builder.build(batch).meta.group[:, act] == -1).all()  # off by default
    assert not builder.hides_past_actions
    builder.cfg.past_action_dropout = 1.0
    try:
        assert builder.hides_past_actions
        group = builder.build(batch).meta.group
        assert torch.equal(group[:, act], (-2 - torch.arange(len(act)))[None, :, None].expand_as(group[:, act]))
        assert (builder.build(batch, hide_past_actions=False).meta.group[:, act] == -1).all()
        builder.cfg.past_action_dropout = 0.5
        draws = torch.stack([builder.build({**batch, "key": batch["key"] + i}).meta.group[:, act[0, 0]] < -1
                             for i in range(8)])  # fmt: skip
        assert 0 < int(draws.sum()) < draws.numel()  # some samples hide, some do not
        again = torch.stack([builder.build({**batch, "key": batch["key"] + i}).meta.group[:, act[0, 0]] < -1
                             for i in range(8)])  # fmt: skip
        assert torch.equal(draws, again)  # the same keys hide the same samples
        assert torch.equal(builder.build(batch).ids, builder.build(batch, hide_past_actions=False).ids)
    finally:
        builder.cfg.past_action_dropout = 0.0
