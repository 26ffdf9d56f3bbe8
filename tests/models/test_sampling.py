"""Inference: the policy's action chunks and imagined frames, with and without the KV cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robofm.errors import UsageError
from robofm.models.diffusion import FrameDiffusion
from robofm.models.sampling import imagine, predict_action_chunk
from tests.models.conftest import WINDOW, batch_of, each_conditioning, make_model


def observed(batch: dict, steps: int = WINDOW) -> dict:
    """The batch as a policy sees it: `steps` observations, no target frame."""
    return {**batch, "frames": batch["frames"][:, :, :steps], "state": batch["state"][:, :steps],
            "actions": batch["actions"][:, :steps]}  # fmt: skip


@pytest.mark.parametrize("kind", ["binning", "fast"])
@pytest.mark.parametrize("steps", [1, WINDOW])
def test_action_chunk_is_the_same_with_and_without_cache(tiny, fast, kind, steps, one_thread):
    ds, builder = tiny if kind == "binning" else fast
    model = make_model(builder)
    batch = observed(batch_of(ds, 3), steps)
    for temperature in (0.0, 1.0):
        a = predict_action_chunk(model, builder, batch, temperature=temperature,
                                 generator=torch.Generator().manual_seed(3))  # fmt: skip
        b = predict_action_chunk(model, builder, batch, temperature=temperature,
                                 generator=torch.Generator().manual_seed(3), use_cache=False)  # fmt: skip
        assert a.shape == (3, builder.cfg.stride, builder.action_dim)
        torch.testing.assert_close(a, b)


def test_action_chunk_is_in_robot_units_and_reproducible(tiny, one_thread):
    ds, builder = tiny
    model = make_model(builder)
    batch = observed(batch_of(ds, 2))
    chunk = predict_action_chunk(model, builder, batch, temperature=1.0, generator=torch.Generator().manual_seed(0))
    again = predict_action_chunk(model, builder, batch, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(chunk, again)
    lo, hi = builder.action_norm.bounds["arm"]
    assert (chunk.numpy() >= lo - 1e-5).all() and (chunk.numpy() <= hi + 1e-5).all()  # binning decodes inside q01..q99
    assert not np.allclose(lo, hi)


def test_a_policy_that_hides_past_actions_predicts_the_same_chunk_whatever_they_were(tiny, one_thread):
    ds, builder = tiny
    model = make_model(builder)
    batch = observed(batch_of(ds, 2))
    other = {**batch, "actions": batch["actions"].flip(0) + 0.3}  # other executed chunks before the last step
    hidden = [predict_action_chunk(model, builder, b, hide_past_actions=True) for b in (batch, other)]
    torch.testing.assert_close(hidden[0], hidden[1])
    visible = [predict_action_chunk(model, builder, b, hide_past_actions=False) for b in (batch, other)]
    assert not torch.allclose(visible[0], visible[1])


def test_the_mean_estimate_is_the_expectation_of_each_slot_and_fast_keeps_its_tokens(tiny, fast, one_thread):
    """estimate="mean" reads a binning chunk as the expected bin centre of each slot (inside q01..q99, and not the
    greedy tokens' centres); FAST's tokens carry no per-slot value, so it decodes them as "tokens" does."""
    for (ds, builder), differs in ((tiny, True), (fast, False)):
        model = make_model(builder)
        batch = observed(batch_of(ds, 2))
        tokens, mean = (predict_action_chunk(model, builder, batch, estimate=e) for e in ("tokens", "mean"))
        uncached = predict_action_chunk(model, builder, batch, estimate="mean", use_cache=False)
        torch.testing.assert_close(mean, uncached, atol=1e-5, rtol=1e-5)
        assert (not torch.allclose(tokens, mean)) == differs
        lo, hi = builder.action_norm.bounds["arm"]
        real = mean[..., : len(lo)].numpy()
        assert (real >= lo - 1e-5).all() and (real <= hi + 1e-5).all()
    with pytest.raises(UsageError, match="tokens or mean"):
        predict_action_chunk(model, builder, batch, estimate="median")


DIFFUSIONS = {"flow": FrameDiffusion("flow"), "ddpm": FrameDiffusion("ddpm"),
              "x0-delta": FrameDiffusion("flow", prediction="x0", target="delta")}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(DIFFUSIONS))
@each_conditioning
def test_imagined_frames_are_the_same_with_and_without_cache(tiny, kind, cond, one_thread):
    ds, builder = tiny
    model = make_model(builder, **cond)
    batch = batch_of(ds, 2)
    context = observed(batch, 2)
    future = batch["actions"][:, 1:].repeat(1, 2, 1, 1)  # 4 chunks: the rollout goes past the window of 3 steps
    runs = [imagine(model, builder, DIFFUSIONS[kind], context, future, sampler_steps=3,
                    generator=torch.Generator().manual_seed(0), use_cache=cache) for cache in (True, False)]  # fmt: skip
    assert runs[0].shape == (2, 4, 2, builder.patches, builder.image.patch_dim())
    torch.testing.assert_close(runs[0], runs[1], atol=1e-4, rtol=1e-4)
    frames = builder.image.to_uint8(builder.image.decode(runs[0], builder.frame_shape))
    assert frames.shape == (2, 4, 2, 8, 8, 3) and frames.dtype == torch.uint8


@each_conditioning
def test_imagined_frames_depend_on_actions(tiny, cond, one_thread):
    """Through the NOISY block's view of ACT_t (and with adaln its modulation), the chunk changes what is imagined,
    also when the NOISY tokens take in the frame before."""
    ds, builder = tiny
    model = make_model(builder, **cond)
    batch = batch_of(ds, 2)
    context, future = observed(batch, 2), batch["actions"][:, 1:2]
    a = imagine(model, builder, FrameDiffusion(), context, future, sampler_steps=2, generator=torch.Generator().manual_seed(0))
    b = imagine(model, builder, FrameDiffusion(), context, -future, sampler_steps=2,
                generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert not torch.allclose(a, b)


def test_an_untrained_delta_model_imagines_the_last_frame_and_a_frame_model_does_not(tiny, one_thread):
    """With x0 prediction of the delta, the zero-initialised frame head is the copy-last-frame baseline exactly,
    for every step of a rollout; predicting the frame itself starts from a blank (mid-grey) image instead."""
    ds, builder = tiny
    model = make_model(builder)
    torch.nn.init.zeros_(model.frame_head.weight)  # as RobofmModel initialises it
    batch = batch_of(ds, 2)
    context, future = observed(batch, 2), batch["actions"][:, 1:].repeat(1, 2, 1, 1)
    last = builder.image.encode(context["frames"])[:, :, -1]  # (B, C, P, pd)
    run = imagine(model, builder, DIFFUSIONS["x0-delta"], context, future, sampler_steps=4,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(run, last[:, None].expand_as(run), atol=1e-5, rtol=0)
    blank = imagine(model, builder, DIFFUSIONS["flow"], context, future[:, :1], sampler_steps=4,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert not torch.allclose(blank[:, 0], last, atol=0.1)


def test_x0_prediction_of_the_true_x0_samples_it_and_costs_no_loss():
    """The x0 head's output enters the flow loss and the sampler as the velocity (x_t - x0) / t: a head that
    outputs the true x0 has zero loss at every t >= MIN_T, and the sampler returns that x0 in any number of steps."""
    from robofm.models.diffusion import MIN_T

    diffusion = FrameDiffusion("flow", prediction="x0", target="delta")
    g = torch.Generator().manual_seed(0)
    frame, prev, noise = (torch.randn(2, 6, 12, generator=g) for _ in range(3))
    x0 = diffusion.clean(frame, prev)
    torch.testing.assert_close(diffusion.frame(x0, prev), frame)
    t = MIN_T + (1 - MIN_T) * torch.rand(2, 6, generator=g)
    x_t, target = diffusion.add_noise(x0, t, noise)
    torch.testing.assert_close(diffusion.model_target(x0, x_t, t), target)
    for steps in (1, 5):
        sampled = diffusion.sample(lambda x, t: x0, tuple(x0.shape), steps, torch.Generator().manual_seed(1))
        torch.testing.assert_close(sampled, x0)


@pytest.mark.parametrize("settings", [{"kind": "ddpm", "prediction": "x0"}, {"prediction": "eps"}, {"target": "diff"}])
def test_unknown_or_unsupported_frame_settings_are_usage_errors(settings):
    from robofm.errors import UsageError

    with pytest.raises(UsageError, match="objective.frame"):
        FrameDiffusion(**settings)


