"""Sizes, sequences for mixed embodiments and action-free data, the objectives, and overfitting one batch."""

from __future__ import annotations

import warnings

import pytest
import torch

from robofm.models.build import load_sequence_builder, model_config, save_sequence_builder
from robofm.models.config import SIZES, ModelConfig
from robofm.models.layout import Vocab
from robofm.models.robofm import RobofmModel
from robofm.models.sequence import IGNORE, TARGET_ACTION
from robofm.objectives.objective import Objective, ObjectiveConfig
from tests.models.conftest import batch_of, make_builder, make_model, make_store

IO = dict(vocab_size=1300, patch_dim=192, state_dim=14, max_cameras=3, max_patches=144)  # a typical pixel setup
RANGES = {"debug": (0, 1e6), "small": (10e6, 20e6), "base": (85e6, 115e6), "large": (270e6, 330e6), "1b": (0.9e9, 1.1e9)}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_sizes_are_in_their_range(size):
    lo, hi = RANGES[size]
    assert lo <= ModelConfig.sized(size, **IO).expected_parameters() <= hi


@pytest.mark.parametrize("size", ["debug", "small"])
def test_parameter_count_matches_the_config(size):
    cfg = ModelConfig.sized(size, **IO)
    assert RobofmModel(cfg).num_parameters() == cfg.expected_parameters()


def test_frame_head_starts_at_zero(tiny):
    _, builder = tiny
    torch.manual_seed(0)
    model = RobofmModel(make_model(builder).cfg)
    assert not model.frame_head.weight.any()


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
    from torch.utils.data import default_collate

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


@pytest.mark.parametrize("diffusion", ["flow", "ddpm", "flow-delta"])
def test_overfit_one_batch(tiny, diffusion, one_thread):
    """The debug model on one fixed batch (same windows, noise and diffusion times at every step) lowers the
    action and frame losses each by at least 10x: it can learn what the objectives ask."""
    ds, builder = tiny
    seq = builder.build(batch_of(ds, 4))
    torch.manual_seed(0)
    model = RobofmModel(make_model(builder).cfg).train()
    kind, _, target = diffusion.partition("-")
    x0 = dict(frame_prediction="x0", frame_target=target) if target else {}  # flow-delta: x0 prediction of the delta
    objective = Objective(ObjectiveConfig(frame_diffusion=kind, **x0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = last = None
    for _ in range(300):
        out = objective(model, seq, torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        last = {k: float(out[k].detach()) for k in ("action", "frame")}
        first = first or last
    assert last["action"] < first["action"] / 10, (first, last)
    assert last["frame"] < first["frame"] / 10, (first, last)


def test_bf16_autocast_runs_every_norm_fused_and_close_to_fp32(tiny):
    """Mixed precision on the CPU: no norm falls back from the fused kernel (torch warns when one does), and the
    losses stay close to full precision."""
    ds, builder = tiny
    seq = builder.build(batch_of(ds, 2))
    model, objective = make_model(builder), Objective(ObjectiveConfig())
    with torch.no_grad():
        full = objective(model, seq, torch.Generator().manual_seed(0))
        with warnings.catch_warnings(record=True) as caught, torch.autocast("cpu", dtype=torch.bfloat16):
            warnings.simplefilter("always")
            half = objective(model, seq, torch.Generator().manual_seed(0))
    assert not [w for w in caught if "fused" in str(w.message)], [str(w.message) for w in caught]
    for k in ("action", "frame"):
        assert abs(float(half[k]) - float(full[k])) < 0.05 * float(full[k]), (k, half[k], full[k])


def test_sizes_table_is_printed_for_a_store(tiny, capsys):
    from robofm.models.__main__ import main

    ds, builder = tiny
    main(["--store", str(ds.stores[0].root), "--patch-size", "4"])
    out = capsys.readouterr().out
    debug = RobofmModel(model_config(builder, "debug")).num_parameters()
    assert all(size in out for size in SIZES) and f"{debug / 1e6:,.2f}M" in out


def test_noised_fills_noisy_blocks_and_context_noise_touches_only_observations(tiny):
    from robofm.models.layout import NOISY, OBS

    ds, builder = tiny
    seq = builder.build(batch_of(ds, 2))
    for context_noise in (0.0, 0.5):
        noised, target = Objective(ObjectiveConfig(context_noise=context_noise)).noised(seq, torch.Generator().manual_seed(0))
        moved = (noised.patches != seq.patches).any(-1)[0]
        kinds = seq.modality[0]
        assert moved[kinds == NOISY].all() and not moved[(kinds != NOISY) & (kinds != OBS)].any()
        assert moved[kinds == OBS].any() == (context_noise > 0)
        assert (noised.noise_level[0, kinds == NOISY] > 0).all() and target.shape == seq.frame_x0.shape
