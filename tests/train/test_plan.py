"""The plan printed at start and robofm-plan's answer for a compute budget or for minutes on this machine."""

from __future__ import annotations

import math

import pytest

from robofm.models.config import ModelConfig
from robofm.train.plan import effective_tokens, main, plan_minutes, suggest

IO = dict(vocab_size=533, patch_dim=768, state_dim=4, max_cameras=2, max_patches=36)


def test_suggest_picks_the_size_closest_to_twenty_tokens_per_parameter():
    for size in ("small", "base", "large"):
        n = ModelConfig.sized(size, **IO).expected_parameters()
        rows = suggest(6 * n * 20 * n, dataset_tokens=1e9, io=IO)  # the compute-optimal budget of this size
        best = next(r for r in rows if r["best"])
        assert best["size"] == size and math.isclose(best["tokens_per_param"], 20, rel_tol=1e-6)


def test_robofm_plan_prints_a_table_for_a_store(tiny_store, capsys):
    main(["--store", str(tiny_store), "--flops", "1e15", "--patch-size", "4", "--window-len", "2"])
    out = capsys.readouterr().out
    assert "robofm-plan" in out and "->" in out and all(s in out for s in ("debug", "small", "base"))


def test_a_mixture_run_reports_what_each_store_gets_at_the_start(tmp_path, tiny_store, capsys):
    from tests.models.conftest import make_store
    from tests.train.conftest import TINY, train_in_process

    other = make_store(tmp_path / "other", n=2, length=16)
    train_in_process(tmp_path / "run", TINY + [f"data.path=[{tiny_store},{other}]", "data.weights=[1,3]",
                                               "trainer.max_steps=1"])  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert "mixture 0" in err and "mixture 1" in err and "(weight 75.0%;" in err
    assert "effective tokens" in err  # what the trained tokens are worth once repeated epochs are discounted


# tokens trained on U = 100 unique tokens per epoch, and what they are worth: D' = U + U R* (1 - e^(-R/R*))
EFFECTIVE_BY_HAND = [
    (50, 50),  # within the first epoch every token is fresh
    (100, 100),  # exactly one epoch: R = 0
    (500, 452.27),  # R = 4: 100 + 100 * 15.4 * (1 - e^(-4 / 15.4)) = 100 + 1540 * 0.22875
    (1640, 1073.47),  # R = R* = 15.4: 100 + 1540 * (1 - 1/e)
    (1e9, 1640),  # R -> infinity: U * (1 + R*)
]


@pytest.mark.parametrize(("tokens", "want"), EFFECTIVE_BY_HAND)
def test_effective_tokens_discount_repeated_epochs_as_muennighoff_et_al(tokens, want):
    assert effective_tokens(tokens, unique=100) == pytest.approx(want, rel=1e-4)


def test_plan_minutes_picks_twenty_effective_tokens_per_parameter_and_probes_no_further():
    parameters = {"a": 1_000, "b": 10_000, "c": 100_000, "d": 1_000_000}
    seconds = {"a": 0.01, "b": 0.03, "c": 0.1, "d": 1.0}  # injected: 60 s of 100-token steps
    probed = []

    def step_seconds(size):
        probed.append(size)
        return seconds[size]

    rows = plan_minutes(1.0, list(parameters), parameters, step_seconds, tokens_per_step=100, unique=1e12)
    by = {r["size"]: r for r in rows}
    assert [r["size"] for r in rows if r["best"]] == ["b"]
    assert by["b"]["steps"] == 2000 and by["b"]["ratio"] == pytest.approx(20)  # 200k fresh tokens, 10k parameters
    assert probed == ["a", "b", "c"]  # c is below 20 already; d, larger and slower, could only fall further
    assert by["d"]["step_s"] is None and "not probed" in by["d"]["note"]
    everything = plan_minutes(1.0, list(parameters), parameters, seconds.get, 100, 1e12, stop_early=False)
    assert all(r["step_s"] is not None for r in everything)


def test_repeated_epochs_move_the_pick_to_a_smaller_model():
    # x trains 120 tokens/parameter, y 7.5: on fresh data y is closer to 20 (log ratio 0.98 against 1.79); on
    # 1000 unique tokens x's 120 epochs are worth 16.4 tokens/parameter and y's 30 epochs only 3.5
    parameters = {"x": 1_000, "y": 4_000}
    seconds = {"x": 0.05, "y": 0.2}  # 1200 and 300 steps of 100 tokens in a minute
    fresh = plan_minutes(1.0, ["x", "y"], parameters, seconds.get, 100, unique=1e12, stop_early=False)
    repeated = plan_minutes(1.0, ["x", "y"], parameters, seconds.get, 100, unique=1_000, stop_early=False)
    assert [r["size"] for r in fresh if r["best"]] == ["y"]
    assert [r["size"] for r in repeated if r["best"]] == ["x"]
    assert [round(r["ratio"], 1) for r in repeated] == [16.4, 3.5]


def test_robofm_plan_minutes_probes_the_sizes_on_the_store_and_prints_the_pick(tiny_store, capsys):
    tiny = ["--patch-size", "4", "--window-len", "2", "--batch-size", "2", "--probe-steps", "1", "--num-workers", "0"]
    main(["--store", str(tiny_store), "--minutes", "0.5", *tiny, "--sizes", "debug", "tiny"])
    out = " ".join(capsys.readouterr().out.split())
    assert "robofm-plan: 0.5 minutes on" in out and "D'/N" in out and "pick:" in out
    assert "-> debug" in out or "-> tiny" in out
    assert "robofm-train model=" in out and "data.batch_size=2" in out
    assert "precision (debug" in out  # auto, decided as robofm-train decides it, and why


def test_robofm_plan_probes_in_the_precision_it_is_given(tiny_store, capsys, monkeypatch):
    import robofm.train.plan as plan

    used = []
    monkeypatch.setattr(plan, "probe_step_seconds", lambda b, s, size, d, precision, n, adaln: used.append(precision) or 0.1)
    tiny = ["--patch-size", "4", "--window-len", "2", "--batch-size", "2", "--num-workers", "0", "--sizes", "debug"]
    main(["--store", str(tiny_store), "--minutes", "0.5", *tiny, "--precision", "fp32"])
    assert used == ["fp32"] and "precision (debug): fp32: set by trainer.precision" in " ".join(capsys.readouterr().out.split())


def test_robofm_plan_sizes_and_probes_the_model_with_adaln_when_asked(tiny_store, capsys, monkeypatch):
    # experiment=demo and pretrain train with model.adaln=true: its modulations are parameters and time per step
    import robofm.train.plan as plan
    from robofm.data.dataset import EpisodeWindowDataset
    from robofm.models.config import model_config
    from robofm.models.robofm import RobofmModel
    from robofm.tokenization.build import TokenizerConfig, build_sequence_builder
    from robofm.tokenization.sequence import SequenceConfig

    counted, probed, real = {}, [], plan.plan_minutes
    monkeypatch.setattr(plan, "plan_minutes", lambda m, sizes, params, *a, **k: counted.update(params) or
                        real(m, sizes, params, *a, **k))  # fmt: skip
    monkeypatch.setattr(plan, "probe_step_seconds", lambda *a: probed.append(a[-1]) or 0.1)
    tiny = ["--patch-size", "4", "--window-len", "2", "--batch-size", "2", "--num-workers", "0", "--sizes", "debug"]
    main(["--store", str(tiny_store), "--minutes", "0.5", *tiny])
    without = counted["debug"]
    main(["--store", str(tiny_store), "--minutes", "0.5", *tiny, "--adaln"])
    out = " ".join(capsys.readouterr().out.split())
    assert probed == [False, True] and out.endswith("model.adaln=true")
    ds = EpisodeWindowDataset([str(tiny_store)], 2, 2, split="train")  # as robofm-plan builds it
    builder = build_sequence_builder(ds, SequenceConfig(window_len=2, stride=2), TokenizerConfig(patch_size=4))
    built = RobofmModel(model_config(builder, "debug", prev_frame_input=True, adaln=True)).num_parameters()
    assert counted["debug"] == built > without


def test_robofm_plan_takes_one_budget(tiny_store):
    with pytest.raises(SystemExit, match="exactly one of --minutes, --flops or --gpu-hours"):
        main(["--store", str(tiny_store), "--minutes", "1", "--flops", "1e15"])
