"""The bars on hand-made results: pass, fail, and n/a (never a silent pass) for a dropped horizon, a horizon not
asked for, a sampler setting not run, a baseline not computed or shuffling that cannot shuffle."""

from __future__ import annotations

import pytest

from robofm.eval.verdicts import line, verdicts


def frames(model: float, shuffled: float, copy_last: float) -> dict:
    """One horizon's world-model entry (PSNR in dB; SSIM left out of the bars) at sampler steps 1 and 10."""
    sampled = {
        "model": {"psnr": model, "ssim": 0.5, "frames": 8},
        "shuffled_actions": {"psnr": shuffled, "ssim": 0.5, "frames": 8},
        "action_use": {"psnr": model - shuffled, "ssim": 0.0},
        "gain_over_copy_last": {"psnr": model - copy_last, "ssim": 0.0},
    }
    return {"copy_last": {"psnr": copy_last, "ssim": 0.5, "frames": 8}, "sampler_steps": {"1": sampled, "10": sampled}}


def result(world_model: dict, mse: dict, dropped: tuple[int, ...] = (), batch_size: int = 4) -> dict:
    return {
        "split": "val",
        "windows": 8,
        "batch_size": batch_size,
        "sampler_steps": [1, 10],
        "horizons": [int(h) for h in world_model],
        "dropped_horizons": list(dropped),
        "world_model": world_model,
        "actions": {"mse": mse},
    }


GOOD_MSE = {"model": 0.1, "train_mean": 0.4, "repeat_last": 0.2}


def passed(res: dict, steps: int = 10) -> list:
    return [v["passed"] for v in verdicts(res, steps)]


def test_every_bar_passes_on_good_numbers():
    res = result({"1": frames(22.0, 21.0, 20.5), "4": frames(18.6, 18.0, 17.5)}, GOOD_MSE)
    out = verdicts(res, 10)
    assert [v["passed"] for v in out] == [True, True, True]
    h1, h4 = "h1 model 22.00 dB, copy-last 20.50 dB (+1.50)", "h4 model 18.60 dB, copy-last 17.50 dB (+1.10)"
    assert out[0]["detail"] == f"10 sampler steps; {h1}; {h4}"
    assert out[1]["detail"] == "10 sampler steps; h4 true actions 18.60 dB, shuffled 18.00 dB (+0.60)"
    assert out[2]["detail"] == "model 0.1, repeat_last 0.2, train_mean 0.4"
    assert line(out[0]).startswith("PASS  beats copy-last by >= 1 dB PSNR at horizons 1 and 4: 10 sampler steps;")


@pytest.mark.parametrize(
    ("h1", "h4", "mse", "expected"),
    [
        ((20.9, 20.0, 20.0), (18.6, 18.0, 17.5), GOOD_MSE, [False, True, True]),  # h1 only 0.9 dB above copy-last
        ((22.0, 21.0, 20.5), (18.6, 18.2, 17.5), GOOD_MSE, [True, False, True]),  # action use 0.4 dB at h4
        ((22.0, 21.0, 20.5), (18.6, 18.0, 17.5), {**GOOD_MSE, "model": 0.3}, [True, True, False]),  # above repeat_last
        ((22.0, 21.0, 20.5), (18.6, 18.0, 17.5), {**GOOD_MSE, "model": 0.2}, [True, True, False]),  # equal: not below
    ],
)
def test_a_bar_fails_on_numbers_below_it(h1, h4, mse, expected):
    res = result({"1": frames(*h1), "4": frames(*h4)}, mse)
    assert passed(res) == expected
    assert [line(v).split()[0] for v in verdicts(res, 10)] == ["PASS" if e else "FAIL" for e in expected]


def test_missing_numbers_give_n_a_with_the_reason():
    dropped = result({"1": frames(22.0, 21.0, 20.5)}, {**GOOD_MSE, "repeat_last": None}, dropped=[4, 16])
    out = verdicts(dropped, 10)
    assert [v["passed"] for v in out] == [None, None, None]
    assert "horizon 4 was dropped (the val episodes are too short)" in out[0]["detail"]
    assert "h1 model 22.00 dB" in out[0]["detail"]  # the horizon it has is still shown
    assert "horizon 4 was dropped" in out[1]["detail"]
    assert "repeat_last not computed" in out[2]["detail"]
    assert line(out[0]).startswith("n/a   beats copy-last")
    not_asked = result({"1": frames(22.0, 21.0, 20.5), "2": frames(20.0, 19.0, 18.0)}, GOOD_MSE)
    assert "horizon 4 was not evaluated (horizons=1,2)" in verdicts(not_asked, 10)[1]["detail"]
    assert verdicts(result({}, {**GOOD_MSE, "model": None}), 10)[2] == {
        "bar": "action MSE below repeat_last and train_mean",
        "passed": None,
        "detail": "no window has actions to score",
    }


def test_a_bar_that_fails_on_what_it_has_fails_despite_missing_numbers():
    res = result({"1": frames(20.0, 20.0, 20.5)}, {**GOOD_MSE, "model": 0.5, "repeat_last": None}, dropped=[4])
    assert passed(res) == [False, None, False]  # h1 below copy-last; MSE above train_mean


def test_sampler_setting_batch_of_one_and_infinite_psnr_are_n_a():
    good = {"1": frames(22.0, 21.0, 20.5), "4": frames(18.6, 18.0, 17.5)}
    missing_setting = verdicts(result(good, GOOD_MSE), 4)
    assert [v["passed"] for v in missing_setting] == [None, None, True]
    reason = "4 sampler steps were not evaluated (sampler_steps ['1', '10'])"
    assert missing_setting[0]["detail"] == f"4 sampler steps; {reason}"  # said once for both horizons
    assert passed(result(good, GOOD_MSE), 1) == [True, True, True]  # the 1-step setting, when asked for
    one_per_batch = verdicts(result(good, GOOD_MSE, batch_size=1), 10)[1]
    assert one_per_batch["passed"] is None and "needs >= 2 windows per batch" in one_per_batch["detail"]
    exact = {"1": frames(22.0, 21.0, 20.5), "4": frames(18.6, 18.0, 17.5)}
    exact["4"]["sampler_steps"]["10"] = {**exact["4"]["sampler_steps"]["10"], "action_use": {"psnr": None}}
    assert verdicts(result(exact, GOOD_MSE), 10)[1]["passed"] is None
