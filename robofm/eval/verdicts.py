"""The bars a pretrained model is held to, judged on robofm-eval's result (the JSON-ready dict of `evaluate`).

Each verdict is {"bar", "passed", "detail"}: passed is True, False, or None (n/a) when the numbers a bar needs are
missing (a horizon dropped or not asked for, a baseline not computed, a PSNR that is not finite) and nothing
missing could change the answer; detail gives the numbers or the reason. A bar that already fails on the numbers
it has is False even when others are missing; a bar never passes on missing numbers.

The frame bars read one sampler setting, `verdict_sampler_steps` (by default robofm-eval's `sampler_steps`, the
setting asked for; `make demo` asks for 1 step, the posterior mean, which PSNR rewards).
"""

from __future__ import annotations

COPY_LAST_MARGIN_DB = 1.0  # imagined frames' PSNR above copying the last frame ...
COPY_LAST_HORIZONS = (1, 4)  # ... at each of these horizons
ACTION_USE_MIN_DB = 0.5  # PSNR under the true actions minus PSNR under shuffled ones ...
ACTION_USE_HORIZON = 4  # ... at this horizon
ACTION_BASELINES = ("repeat_last", "train_mean")  # the model's action MSE below each of these

WORDS = {True: "PASS", False: "FAIL", None: "n/a"}


def verdicts(result: dict, sampler_steps: int) -> list[dict]:
    """The three bars on `result`, the frame bars at `sampler_steps` (one of result["sampler_steps"])."""
    return [beats_copy_last(result, sampler_steps), uses_actions(result, sampler_steps), beats_action_baselines(result)]


def line(verdict: dict) -> str:
    """One verdict as one line: "PASS  bar: detail"."""
    return f"{WORDS[verdict['passed']]:<4}  {verdict['bar']}: {verdict['detail']}"


def beats_copy_last(result: dict, sampler_steps: int) -> dict:
    """Imagined frames' PSNR at least COPY_LAST_MARGIN_DB above copy_last's at each of COPY_LAST_HORIZONS."""
    horizons = " and ".join(map(str, COPY_LAST_HORIZONS))
    bar = f"beats copy-last by >= {COPY_LAST_MARGIN_DB:g} dB PSNR at horizons {horizons}"
    outcomes, parts = [], []
    for h in COPY_LAST_HORIZONS:
        row, reason = _sampled_row(result, h, sampler_steps)
        gain = None if row is None else row["gain_over_copy_last"]["psnr"]
        if row is not None and gain is None:
            reason = f"horizon {h}: a PSNR is not finite"
        if gain is None:
            outcomes.append(None)
            parts.append(reason)
            continue
        copy = result["world_model"][str(h)]["copy_last"]["psnr"]
        outcomes.append(gain >= COPY_LAST_MARGIN_DB)
        parts.append(f"h{h} model {row['model']['psnr']:.2f} dB, copy-last {copy:.2f} dB ({gain:+.2f})")
    return _verdict(bar, outcomes, f"{sampler_steps} sampler steps; " + "; ".join(dict.fromkeys(parts)))


def uses_actions(result: dict, sampler_steps: int) -> dict:
    """Action use (PSNR under the true actions minus under shuffled ones) at least ACTION_USE_MIN_DB at
    ACTION_USE_HORIZON."""
    h = ACTION_USE_HORIZON
    bar = f"uses actions: action use (PSNR true minus shuffled actions) >= {ACTION_USE_MIN_DB:g} dB at horizon {h}"
    row, reason = _sampled_row(result, h, sampler_steps)
    if row is not None and min(result.get("batch_size", 2), result["windows"]) < 2:
        row, reason = None, "shuffled_actions rolls chunks across a batch: it needs >= 2 windows per batch"
    use = None if row is None else row["action_use"]["psnr"]
    if row is not None and use is None:
        reason = f"horizon {h}: a PSNR is not finite"
    if use is None:
        return _verdict(bar, [None], f"{sampler_steps} sampler steps; {reason}")
    true, shuffled = row["model"]["psnr"], row["shuffled_actions"]["psnr"]
    detail = f"{sampler_steps} sampler steps; h{h} true actions {true:.2f} dB, shuffled {shuffled:.2f} dB ({use:+.2f})"
    return _verdict(bar, [use >= ACTION_USE_MIN_DB], detail)


def beats_action_baselines(result: dict) -> dict:
    """The model's action MSE (over all embodiments) strictly below each of ACTION_BASELINES'."""
    bar = f"action MSE below {' and '.join(ACTION_BASELINES)}"
    mse = result["actions"]["mse"]
    if mse.get("model") is None:
        return _verdict(bar, [None], "no window has actions to score")
    outcomes, parts = [], [f"model {mse['model']:.4g}"]
    for name in ACTION_BASELINES:
        if mse.get(name) is None:
            outcomes.append(None)
            parts.append(f"{name} not computed (see notes)")
        else:
            outcomes.append(mse["model"] < mse[name])
            parts.append(f"{name} {mse[name]:.4g}")
    return _verdict(bar, outcomes, ", ".join(parts))


def _sampled_row(result: dict, horizon: int, sampler_steps: int) -> tuple[dict | None, str]:
    """(the world model's row at horizon and sampler_steps, "") or (None, why it is missing)."""
    if horizon in result.get("dropped_horizons", []):
        return None, f"horizon {horizon} was dropped (the {result['split']} episodes are too short)"
    if str(horizon) not in result["world_model"]:
        return None, f"horizon {horizon} was not evaluated (horizons={','.join(map(str, result['horizons']))})"
    per_steps = result["world_model"][str(horizon)]["sampler_steps"]
    if str(sampler_steps) not in per_steps:
        return None, f"{sampler_steps} sampler steps were not evaluated (sampler_steps {list(per_steps)})"
    return per_steps[str(sampler_steps)], ""


def _verdict(bar: str, outcomes: list[bool | None], detail: str) -> dict:
    """False if any outcome fails, else None if any is missing, else True."""
    passed = False if False in outcomes else None if None in outcomes else True
    return {"bar": bar, "passed": passed, "detail": detail}
