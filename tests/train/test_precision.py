"""trainer.precision=auto: the choice for each kind of device (a pure function of the flags and the measured speedup,
so no timing is asserted), the debug runs pinned to fp32, and auto runs that train and record what ran."""

from __future__ import annotations

import math

import pytest
import torch

from robofm.errors import UsageError
from robofm.train import precision
from robofm.train.precision import choose_precision, cpu_flags, resolve_precision
from tests.train.conftest import TINY, compose_config, read_metrics, step_losses, train_in_process

CPU = torch.device("cpu")


@pytest.mark.parametrize(("cuda_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_a_cuda_device_runs_bf16_when_it_supports_it(cuda_bf16, expected):
    chosen, reason = choose_precision("cuda", cuda_bf16=cuda_bf16)
    assert chosen == expected and reason.startswith(f"{expected}: ")


def test_a_cpu_without_bf16_units_runs_fp32_whatever_was_measured():
    for speedup in (None, 0.5, 4.0):
        chosen, reason = choose_precision("cpu", cpu_flags={"avx2", "avx512f", "fma"}, bf16_speedup=speedup)
        assert chosen == "fp32" and "no bf16 matrix units" in reason


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_a_cpu_with_bf16_units_runs_bf16_only_when_it_measured_faster(flag):
    faster = choose_precision("cpu", cpu_flags={"avx512f", flag}, bf16_speedup=3.9)
    assert faster == ("bf16", f"bf16: the CPU has {flag}, bf16 matmul 3.9x fp32")
    slower, reason = choose_precision("cpu", cpu_flags={"avx512f", flag}, bf16_speedup=0.7)
    assert slower == "fp32" and flag in reason and "0.7x" in reason
    assert choose_precision("cpu", cpu_flags={flag}, bf16_speedup=precision.MIN_CPU_SPEEDUP * 0.9)[0] == "fp32"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(x86) == {"fpu", "avx512f", "amx_bf16"}
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_a_set_precision_is_kept_and_a_bad_one_is_named():
    assert resolve_precision("fp32", CPU, 64) == ("fp32", "fp32: set by trainer.precision")
    assert resolve_precision("bf16", CPU, 64) == ("bf16", "bf16: set by trainer.precision")
    with pytest.raises(UsageError, match="trainer.precision"):
        resolve_precision("fp16", CPU, 64)
    with pytest.raises(UsageError, match="trainer.precision must be one of auto, fp32, bf16"):
        compose_config(TINY + ["trainer.precision=fp16"])


def test_auto_is_the_default_and_the_debug_runs_are_pinned_to_fp32():
    default, _ = compose_config([])
    assert default.trainer.precision == "auto"
    tiny, _ = compose_config(TINY)  # the exact-resume and distributed tests compare these runs bitwise
    assert tiny.trainer.precision == "fp32"
    assert resolve_precision(tiny.trainer.precision, CPU, 64)[0] == "fp32"


def test_an_auto_run_trains_and_records_the_precision_it_ran(tmp_path, tiny_store, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "300")  # the plan's table on one line per row
    run = tmp_path / "run"
    overrides = [f"data.path={tiny_store}", "trainer.precision=auto", "trainer.max_steps=3", "trainer.log_every=1"]
    trainer = train_in_process(run, TINY + overrides)
    assert trainer.precision in ("fp32", "bf16")  # whichever this machine runs faster
    assert len(step_losses(run)) == 3 and all(math.isfinite(v) for v in step_losses(run).values())
    assert {m["precision"] for m in read_metrics(run)} == {trainer.precision}
    assert trainer.precision_reason.startswith(trainer.precision + ": ")
    assert trainer.precision_reason in capsys.readouterr().err  # the plan's row: what ran and why


def test_auto_on_a_cpu_with_fast_bf16_trains_in_bf16(tmp_path, tiny_store, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda dim: 3.9)
    monkeypatch.setenv("COLUMNS", "300")
    run = tmp_path / "run"
    overrides = [f"data.path={tiny_store}", "trainer.precision=auto", "trainer.max_steps=2", "trainer.log_every=1"]
    trainer = train_in_process(run, TINY + overrides)
    assert trainer.precision == "bf16"
    assert all(math.isfinite(v) for v in step_losses(run).values())
    assert "bf16: the CPU has amx_bf16, bf16 matmul 3.9x fp32" in capsys.readouterr().err
    latest = (run / "checkpoints" / "latest").read_text().strip()
    state = torch.load(run / "checkpoints" / latest / "state.pt", weights_only=True)
    assert state["precision"] == "bf16"  # the run's config.yaml keeps auto; the checkpoint says what ran
