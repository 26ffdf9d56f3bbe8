"""The attention rules: nothing leaks, NOISY blocks are private, FlexAttention agrees with SDPA."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robofm.models.backbone import SplitMask, allowed
from robofm.models.robofm import RobofmModel
from robofm.tokenization.layout import NOISY, OBS, STATE
from tests.models.conftest import batch_of, each_conditioning, make_model


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


@each_conditioning
def test_changing_a_token_changes_only_the_outputs_allowed_to_see_it(tiny, cond):
    ds, builder = tiny
    model = make_model(builder, **cond)
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


@each_conditioning
def test_padding_and_missing_cameras_are_seen_by_nobody(tiny, cond):
    ds, builder = tiny
    model = make_model(builder, **cond)
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


@each_conditioning
def test_clean_stream_is_the_same_with_and_without_noisy_blocks(tiny, cond):
    ds, builder = tiny
    model = make_model(builder, **cond)
    batch = batch_of(ds, 2)
    with_noisy, clean = builder.build(batch, noisy_steps=(1, 2, 3)), builder.build(batch, noisy_steps=())
    out_noisy, out_clean = model(with_noisy), model(clean)
    kept = with_noisy.meta.group[0] < 0
    assert torch.equal(with_noisy.ids[:, kept], clean.ids)
    torch.testing.assert_close(out_noisy.hidden[:, kept], out_clean.hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_noisy.logits, out_clean.logits, atol=1e-5, rtol=0)  # read out at clean tokens


def test_an_action_chunk_modulates_only_the_noisy_block_of_the_frame_it_leads_to(tiny):
    """adaln: chunk t conditions NOISY_t+1 in every block; no other token's output moves, so the policy (the clean
    stream) never sees the continuous action it must predict."""
    ds, builder = tiny
    model = make_model(builder, adaln=True)
    seq = builder.build(batch_of(ds, 2))
    base = model(seq).hidden
    for t in range(builder.cfg.window_len):
        actions = seq.actions.clone()
        actions[:, t] += 0.5
        changed = (model(dataclasses.replace(seq, actions=actions)).hidden - base).abs().amax(-1)[0] > 1e-6
        assert torch.equal(changed, seq.meta.group[0] == t + 1), t


def test_a_new_adaln_model_computes_what_the_unconditioned_one_does(tiny):
    """The modulations start at zero: adding the conditioning changes nothing until training moves it."""
    ds, builder = tiny
    plain = make_model(builder)
    torch.manual_seed(1)
    conditioned = RobofmModel(make_model(builder, adaln=True).cfg).eval()
    missing, unexpected = conditioned.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".ada." in k or k == "action_in.weight" for k in missing)
    seq = builder.build(batch_of(ds, 2))
    a, b = plain(seq), conditioned(seq)
    assert torch.equal(a.hidden, b.hidden) and torch.equal(a.frames, b.frames)


@pytest.mark.parametrize("adaln", [False, True])
def test_a_previous_patch_reaches_only_the_noisy_block_that_changes_it(tiny, adaln):
    """prev_frame_input: the patch before NOISY token j enters token j's input; only j's block sees it (the clean
    stream, the policy, never does), and the inputs of the other NOISY tokens are untouched."""
    ds, builder = tiny
    model = make_model(builder, adaln=adaln, prev_frame_input=True)
    seq = builder.build(batch_of(ds, 2))
    base = model(seq).hidden
    noisy = seq.noisy_index
    for j in (0, len(noisy) // 2, len(noisy) - 1):
        prev = seq.frame_prev.clone()
        prev[:, j] += 1.0
        changed = (model(dataclasses.replace(seq, frame_prev=prev)).hidden - base).abs().amax(-1)[0] > 1e-6
        group = seq.meta.group[0]
        assert changed[noisy[j]] and torch.equal(changed, changed & (group == group[noisy[j]])), j


def test_a_slice_must_hold_all_or_none_of_the_noisy_tokens(tiny):
    ds, builder = tiny
    model = make_model(builder, prev_frame_input=True)
    seq = builder.build(batch_of(ds, 1))
    model(seq.tokens(slice(0, int(seq.noisy_index[0]))))  # none: the context before the NOISY blocks
    with pytest.raises(ValueError, match="NOISY tokens"):
        model(seq.tokens(slice(0, int(seq.noisy_index[1]))))


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




@each_conditioning
def test_hidden_past_actions_reach_no_later_clean_token_but_every_noisy_block(tiny, cond):
    """The copycat answer (sequence.past_action_dropout): with a sample's action chunks hidden, changing chunk 0
    changes only its own later slots and the NOISY blocks, so the policy predicts chunk 1 from observations."""
    ds, builder = tiny
    model = make_model(builder, **cond)
    batch = batch_of(ds, 2)
    lay = builder.layout(builder.noisy_steps())
    first = int(lay.act_index[0][0])
    for hide in (False, True):
        seq = builder.build(batch, hide_past_actions=hide)
        changed = (model(_perturb(seq, first)).hidden - model(seq).hidden).abs().amax(-1)[0] > 1e-6
        later_clean = (seq.meta.group[0] < 0) & (torch.arange(len(lay)) > first)
        noisy = seq.meta.group[0] >= 0
        assert bool(changed[noisy].all())  # the world model sees every executed chunk
        own_chunk = torch.zeros(len(lay), dtype=torch.bool)
        own_chunk[torch.as_tensor(lay.act_index[0][1:])] = True
        assert torch.equal(changed & later_clean, later_clean & (own_chunk if hide else later_clean)), hide


def test_the_split_attention_computes_what_one_masked_attention_does(tiny, monkeypatch):
    """NOISY blocks close the sequence, so the clean stream and each NOISY block are scored apart (SplitMask): the
    outputs and the gradients equal those of one attention over every token with the full mask."""
    ds, builder = tiny
    model = make_model(builder)
    seq = builder.build(batch_of(ds, 2), hide_past_actions=True)
    assert SplitMask.of(seq.meta) is not None and SplitMask.of(seq.meta).n == builder.cfg.window_len

    def run():
        model.zero_grad()
        out = model(seq)
        (out.hidden.square().mean() + out.frames.square().mean()).backward()
        return out.hidden.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    split, split_grads = run()
    monkeypatch.setattr(SplitMask, "of", staticmethod(lambda meta: None))
    full, full_grads = run()
    torch.testing.assert_close(split, full, atol=1e-5, rtol=1e-4)
    for a, b in zip(split_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-3)


def test_bf16_autocast_on_the_cpu_attends_in_fp32_and_matches_fp32(tiny, monkeypatch):
    """The CPU's flash kernel runs faster in fp32 than in bf16, so bf16 autocast attends in fp32 (backbone._sdpa):
    the result is the fp32 model's within bf16 rounding, with gradients."""
    ds, builder = tiny
    model = make_model(builder)
    seq = builder.build(batch_of(ds, 2))
    full = model(seq).hidden
    sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **kw: seen.append(q.dtype) or sdpa(q, *a, **kw))  # fmt: skip
    with torch.autocast("cpu", torch.bfloat16):
        out = model(seq)
    assert seen and set(seen) == {torch.float32}
    torch.testing.assert_close(out.hidden.float(), full, atol=0.1, rtol=0.05)
    out.frames.float().square().mean().backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
