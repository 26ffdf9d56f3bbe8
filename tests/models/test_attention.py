"""The attention rules: nothing leaks, NOISY blocks are private, FlexAttention agrees with SDPA."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robofm.models.backbone import allowed
from robofm.tokenization.layout import NOISY, OBS, STATE
from tests.models.conftest import batch_of, make_model


def _perturb(seq, i: int):
    """The sequence with token i's input changed, whatever its kind."""
    ids, patches, state = seq.ids.clone(), seq.patches.clone(), seq.state.clone()
    kind = int(seq.modality[0, i])
    if kind in (OBS, NOISY):
        patches[:, i] += 1.0
    elif kind == STATE:
        state[:, i] += 1.0
    else:
        ids[:, i] = (ids[:, i] + 7) % 50 + 5
    return dataclasses.replace(seq, ids=ids, patches=patches, state=state)


def test_changing_a_token_changes_only_the_outputs_allowed_to_see_it(tiny):
    ds, builder = tiny
    model = make_model(builder)
    seq = builder.build(batch_of(ds, 2))
    see = allowed(seq.meta, seq.meta)[0]
    base = model(seq).hidden
    lay = builder.layout(builder.noisy_steps())
    picks = {"text": lay.text_index[1], "obs": lay.obs_index[1][3], "state": lay.state_index[1],
             "action": lay.act_index[0][1], "noisy": lay.noisy_index[0][2], "last noisy": lay.noisy_index[-1][0]}  # fmt: skip
    for name, i in picks.items():
        changed = (model(_perturb(seq, int(i))).hidden - base).abs().amax(-1)[0] > 1e-6
        expected = see[:, i].clone()
        expected[i] = True
        assert torch.equal(changed, expected), f"{name} token {i}: outputs that changed differ from those allowed"


def test_padding_and_missing_cameras_are_seen_by_nobody(tiny):
    ds, builder = tiny
    model = make_model(builder)
    batch = batch_of(ds, 1)
    batch["camera_mask"][:, 1] = False
    seq = builder.build(batch)
    base = model(seq).hidden
    lay = builder.layout(builder.noisy_steps())
    hidden = [lay.text_index[-1], lay.obs_index[0][-1]]  # a PAD text slot; a patch of the missing camera
    for i in hidden:
        assert not seq.meta.valid[0, i]
        changed = (model(_perturb(seq, int(i))).hidden - base).abs().amax(-1)[0] > 1e-6
        assert changed.nonzero().flatten().tolist() == [i]


def test_clean_stream_is_the_same_with_and_without_noisy_blocks(tiny):
    ds, builder = tiny
    model = make_model(builder)
    batch = batch_of(ds, 2)
    with_noisy, clean = builder.build(batch, noisy_steps=(1, 2, 3)), builder.build(batch, noisy_steps=())
    out_noisy, out_clean = model(with_noisy), model(clean)
    kept = with_noisy.meta.group[0] < 0
    assert torch.equal(with_noisy.ids[:, kept], clean.ids)
    torch.testing.assert_close(out_noisy.hidden[:, kept], out_clean.hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_noisy.logits, out_clean.logits, atol=1e-5, rtol=0)  # read out at clean tokens


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_attention_matches_sdpa(tiny):
    ds, builder = tiny
    model = make_model(builder)
    seq = builder.build(batch_of(ds, 2))
    with torch.no_grad():  # FlexAttention has no CPU backward
        sdpa = model(seq)
        model.cfg.attention = "flex"
        flex = model(seq)
    torch.testing.assert_close(flex.hidden, sdpa.hidden, atol=1e-5, rtol=1e-4)


