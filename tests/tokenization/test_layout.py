"""The layout of one sample's tokens: which token sees which, and where each kind sits."""

from __future__ import annotations

import torch

from robofm.models.backbone import allowed
from robofm.tokenization.layout import ACTION, TEXT, Layout, TokenMeta


def test_layout_rules():
    lay = Layout(steps=2, cameras=2, patches=3, text_len=4, action_len=5, noisy_steps=(1, 2))
    meta = lambda a: torch.from_numpy(a)[None]  # noqa: E731
    m = TokenMeta(meta(lay.block), meta(lay.group), torch.ones(1, len(lay), dtype=torch.bool))
    see = allowed(m, m)[0]
    obs0, obs1 = lay.obs_index
    noisy1, noisy2 = lay.noisy_index
    act0 = lay.act_index[0]
    assert see[obs0][:, obs0].all()  # an OBS block is bidirectional
    assert not see[act0[1], act0[2]] and see[act0[2], act0[1]]  # actions are causal
    assert see[noisy1][:, act0].all() and see[noisy1][:, noisy1].all()  # NOISY_1 sees ACT_0 and itself
    assert not see[noisy1][:, obs1].any() and not see[noisy1][:, noisy2].any()  # not the frame it predicts
    assert not see[:, noisy1][lay.group < 0].any()  # no clean token sees a NOISY block
    assert (lay.pos[noisy1] == lay.pos[obs1]).all()  # NOISY_1 sits at OBS_1's positions


def test_token_kinds_in_layout(tiny):
    _, builder = tiny
    lay = builder.layout((3,))
    assert (lay.modality[lay.text_index] == TEXT).all() and (lay.modality[lay.act_index] == ACTION).all()
    assert len(lay.noisy_index) == 1 and lay.noisy_index[0][-1] == len(lay) - 1  # NOISY_K closes the sequence
