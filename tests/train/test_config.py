"""The training configuration: every group option composes and builds; bad keys and values fail at start naming
the key; an experiment added to the checkout's conf/ or to a --config-dir composes; Hydra's --cfg job and --multirun
work on the command."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
import torch
import yaml

from robofm.errors import UsageError
from robofm.objectives.objective import Objective
from robofm.train import parallelize
from robofm.train.build import build_builder, build_datasets, build_model, build_optimizer, build_scheduler, lr_factor
from robofm.train.config import OptimConfig, TrainConfig
from robofm.train.guard import SpikeGuard
from robofm.train.precision import resolve_precision
from tests.train.conftest import TINY, compose_config, read_metrics, run_cli

CONF = files("robofm.conf")
CHECKOUT_CONF = Path(__file__).parents[2] / "conf"
# a user's experiment: an override of a group and of a key
MINE = "# @package _global_\ndefaults:\n  - override /model: debug\ntrainer:\n  max_steps: 3\n"
GROUP_OPTIONS = sorted((group.name, option.name.removesuffix(".yaml")) for group in CONF.iterdir() if group.is_dir()
                       for option in group.iterdir() if option.name.endswith(".yaml"))  # fmt: skip


def test_every_group_of_the_issue_has_options():
    groups = {g for g, _ in GROUP_OPTIONS}
    assert groups == {"data", "model", "tokenizer", "objective", "optim", "trainer", "experiment"}
    assert {o for g, o in GROUP_OPTIONS if g == "trainer"} == {"cpu", "ddp", "fsdp"}
    assert {o for g, o in GROUP_OPTIONS if g == "experiment"} >= {"demo", "debug"}


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_and_builds(group, option, tiny_store):
    # the option under test on the tiny store (8x8 frames: 4-pixel patches); the model is built on the meta
    # device, so the 1b size costs no memory
    tiny = {"data.path": tiny_store, "tokenizer.patch_size": 4, "tokenizer.fast_fit_chunks": 64,
            "tokenizer.fast_vocab_size": 300}  # fmt: skip
    cfg, resolved = compose_config([f"{group}={option}", *(f"{k}={v}" for k, v in tiny.items())])
    assert isinstance(cfg, TrainConfig)
    chosen = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    if group != "experiment":  # the option's keys land in its group's node, but for those overridden above
        node = getattr(cfg, group)
        assert {k: getattr(node, k) for k in chosen if f"{group}.{k}" not in tiny} == {
            k: v for k, v in chosen.items() if f"{group}.{k}" not in tiny}
    assert yaml.safe_load(resolved)["trainer"]["max_steps"] == cfg.trainer.max_steps
    train, _ = build_datasets(cfg)
    builder = build_builder(cfg, train)
    with torch.device("meta"):
        model = build_model(cfg, builder)
    assert model.cfg.size == cfg.model.size
    optimizer = build_optimizer(model, cfg.optim)
    build_scheduler(optimizer, cfg)
    Objective(cfg.objective)
    SpikeGuard(cfg.trainer.guard)
    cpu = torch.device("cpu")
    parallelize.autocast(resolve_precision(cfg.trainer.precision, cpu, model.cfg.dim)[0], cpu)


def test_weight_decay_spares_norms_and_embeddings(tiny_store):
    cfg, _ = compose_config(TINY + [f"data.path={tiny_store}"])
    model = build_model(cfg, build_builder(cfg, build_datasets(cfg)[0]))
    decay, no_decay = build_optimizer(model, cfg.optim).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == cfg.optim.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"tok_emb.weight", "backbone.norm.weight"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_learning_rate_warms_up_then_follows_the_schedule(schedule):
    optim = OptimConfig(warmup_steps=10, schedule=schedule, min_lr_ratio=0.1, decay_fraction=0.2)
    factors = [lr_factor(s, 100, optim) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[:10] == sorted(factors[:10])
    assert factors[10:] == sorted(factors[10:], reverse=True)
    end = {"cosine": 0.1, "wsd": 0.1, "constant": 1.0}[schedule]
    assert factors[-1] == pytest.approx(end, abs=0.01)
    if schedule == "wsd":
        assert factors[79] == 1.0 and factors[81] < 1.0


def test_an_experiment_dropped_into_the_checkouts_conf_composes():
    # an editable install composes the checkout's conf/ itself: a new experiment needs no reinstall
    assert Path(str(CONF)) == CHECKOUT_CONF, f"robofm.conf is {CONF}, not this checkout's conf/: pip install -e ."
    dropped = CHECKOUT_CONF / "experiment" / "_dropped_by_test_config.yaml"
    dropped.write_text(MINE)
    try:
        cfg, _ = compose_config(["experiment=_dropped_by_test_config"])
    finally:
        dropped.unlink()
    assert cfg.trainer.max_steps == 3 and cfg.model.size == "debug"


# ------------------------------------------------------------------------------------------------ the command


@pytest.mark.slow
def test_an_experiment_in_a_config_dir_composes(tmp_path):
    # the experiment comes from my_conf/, the model option it chooses from the shipped configs
    (tmp_path / "my_conf" / "experiment").mkdir(parents=True)
    (tmp_path / "my_conf" / "experiment" / "mine.yaml").write_text(MINE)
    result = run_cli(["--config-dir", "my_conf", "experiment=mine", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["trainer"]["max_steps"] == 3 and printed["model"]["size"] == "debug"


@pytest.mark.slow
@pytest.mark.parametrize(("override", "named"), [
    ("trainer.max_stepz=3", "trainer.max_stepz"),  # a misspelt key
    ("trainer.max_steps=abc", "trainer.max_steps"),  # a wrong type
    ("optim.schedule=cosin", "optim.schedule"),  # a value outside its choices
    ("model.heads=3", "model.heads=3"),  # a dim (debug's 64) that does not split into the heads
])  # fmt: skip
def test_a_bad_key_or_value_fails_at_start_naming_the_key(tmp_path, tiny_store, override, named):
    run = tmp_path / "run"
    result = run_cli(TINY + [f"data.path={tiny_store}", override, f"hydra.run.dir={run}"])
    assert result.returncode != 0
    assert named in result.stderr
    assert not (run / "metrics.jsonl").exists()  # it failed before training


@pytest.mark.slow
def test_cfg_job_prints_the_resolved_config_and_trains_nothing(tmp_path, tiny_store):
    result = run_cli(TINY + [f"data.path={tiny_store}", "trainer.max_steps=7", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["trainer"]["max_steps"] == 7 and printed["model"]["size"] == "debug"
    assert printed["data"]["path"] == str(tiny_store) and printed["data"]["batch_size"] == 4
    assert not list(tmp_path.iterdir())  # no run folder


@pytest.mark.slow
def test_multirun_sweeps_into_one_folder_per_run(tmp_path, tiny_store):
    sweep = tmp_path / "sweep"
    result = run_cli(["--multirun", *TINY, f"data.path={tiny_store}", "trainer.max_steps=1,2", "trainer.log_every=1",
                      f"hydra.sweep.dir={sweep}"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == ["0", "1"]
    for run, steps in zip(runs, (1, 2), strict=True):
        assert [m["step"] for m in read_metrics(run)] == list(range(1, steps + 1))
        assert (run / "export" / "model.safetensors").is_file()
        recipe = (run / "export" / "README.md").read_text().split("## Recipe")[1].split("##")[0]  # the model card's
        assert "`robofm-train experiment=debug tokenizer.patch_size=4" in recipe and f"trainer.max_steps={steps}" in recipe
        assert f"from scratch, {steps} steps of 4 windows" in recipe and "hydra." not in recipe


def test_shape_keys_override_the_size_and_a_bad_one_is_named(tiny_store):
    shape = ["model.dim=192", "model.depth=6", "model.heads=6"]
    cfg, _ = compose_config(TINY + [f"data.path={tiny_store}", "model=small", *shape])
    assert (cfg.model.dim, cfg.model.depth, cfg.model.heads, cfg.model.ffn_dim) == (192, 6, 6, None)  # None: preset's
    with torch.device("meta"):
        model = build_model(cfg, build_builder(cfg, build_datasets(cfg)[0]))
    assert (model.cfg.dim, model.cfg.depth, model.cfg.heads, model.cfg.ffn_dim) == (192, 6, 6, 512)
    for override in ("model.heads=7", "model.dim=256", "model.ffn_dim=-1"):  # small: dim 320, 5 heads
        with pytest.raises(UsageError, match=override.split("=")[0]):
            compose_config(["model=small", override])
