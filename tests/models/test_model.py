"""Sizes, sequences for mixed embodiments and action-free data, the objectives, and overfitting one batch."""

from __future__ import annotations

import warnings

import pytest
import torch

from robofm.errors import UsageError
from robofm.models.config import SIZES, ModelConfig, model_config
from robofm.models.robofm import RobofmModel
from robofm.objectives.objective import Objective, ObjectiveConfig
from tests.models.conftest import batch_of, each_conditioning, make_model

IO = dict(vocab_size=1300, patch_dim=192, state_dim=14, max_cameras=3, max_patches=144)  # a typical pixel setup
RANGES = {
    "debug": (0, 0.5e6),
    "tiny": (0.8e6, 2e6),
    "mini": (2.5e6, 5e6),
    "small": (10e6, 20e6),
    "base": (85e6, 115e6),
    "large": (270e6, 330e6),
    "1b": (0.9e9, 1.1e9),
}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_sizes_are_in_their_range(size):
    lo, hi = RANGES[size]
    assert lo <= ModelConfig.sized(size, **IO).expected_parameters() <= hi


def test_every_size_has_a_range_and_sizes_grow():
    assert set(RANGES) == set(SIZES)
    counts = [ModelConfig.sized(size, **IO).expected_parameters() for size in SIZES]
    assert counts == sorted(counts)  # robofm-plan probes them in this order and stops once they are too big


@pytest.mark.parametrize("size", ["debug", "tiny", "mini", "small"])
@each_conditioning
def test_parameter_count_matches_the_config(size, cond):
    cfg = ModelConfig.sized(size, **IO, action_chunk_dim=8, **cond)
    assert RobofmModel(cfg).num_parameters() == cfg.expected_parameters()


def test_shape_keys_override_the_preset():
    cfg = ModelConfig.sized("small", dim=192, depth=6, heads=6, ffn_dim=None, **IO)  # None: the preset's
    assert (cfg.size, cfg.dim, cfg.depth, cfg.heads, cfg.ffn_dim) == ("small", 192, 6, 6, 512)
    assert cfg.expected_parameters() == ModelConfig.sized("mini", **IO).expected_parameters()
    assert ModelConfig.sized("debug", ffn_dim=100, **IO).ffn_dim == 100


SHAPES_THAT_DO_NOT_FIT = [
    ({"heads": 5}, "model.heads=5"),  # 64 / 5 is not a whole head
    ({"dim": 96, "heads": 32}, "model.dim=96 and model.heads=32"),  # heads of 3 channels: rotary needs pairs
    ({"dim": 36}, "model.dim=36"),  # 36 / 4 = 9 channels per head
    ({"depth": 0}, "model.depth"),
]


@pytest.mark.parametrize(("overrides", "named"), SHAPES_THAT_DO_NOT_FIT)
def test_a_shape_that_does_not_fit_names_the_key(overrides, named):
    with pytest.raises(UsageError, match=named):
        ModelConfig.sized("debug", **overrides, **IO)


def test_frame_head_starts_at_zero(tiny):
    _, builder = tiny
    torch.manual_seed(0)
    model = RobofmModel(make_model(builder).cfg)
    assert not model.frame_head.weight.any()


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
    from robofm.tokenization.layout import NOISY, OBS

    ds, builder = tiny
    seq = builder.build(batch_of(ds, 2))
    for context_noise in (0.0, 0.5):
        noised, target = Objective(ObjectiveConfig(context_noise=context_noise)).noised(seq, torch.Generator().manual_seed(0))
        moved = (noised.patches != seq.patches).any(-1)[0]
        kinds = seq.modality[0]
        assert moved[kinds == NOISY].all() and not moved[(kinds != NOISY) & (kinds != OBS)].any()
        assert moved[kinds == OBS].any() == (context_noise > 0)
        assert (noised.noise_level[0, kinds == NOISY] > 0).all() and target.shape == seq.frame_x0.shape


def test_the_objective_needs_only_forward(tiny):
    """A wrapper that exposes nothing but forward (as DDP does) gives the same losses as the model itself."""

    class ForwardOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, seq):
            return self.inner(seq)

    ds, builder = tiny
    model, seq = make_model(builder), builder.build(batch_of(ds, 2))
    objective = Objective(ObjectiveConfig())
    direct = objective(model, seq, torch.Generator().manual_seed(0))
    wrapped = objective(ForwardOnly(model), seq, torch.Generator().manual_seed(0))
    assert all(torch.equal(direct[k], wrapped[k]) for k in direct)
