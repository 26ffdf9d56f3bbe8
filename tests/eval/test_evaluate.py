"""robofm-eval end to end on a tiny trained debug run: every key, reproducible, every kind of checkpoint folder,
and bad input giving a clear error (exit 2) rather than a traceback."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from robofm.eval.__main__ import main, render
from robofm.eval.evaluate import EvalConfig, evaluate
from robofm.eval.verdicts import line
from robofm.models.pretrained import from_pretrained
from tests.conftest import write_store
from tests.models.conftest import make_store, textured_episode
from tests.train.conftest import TINY, train_in_process

FAST = ["horizons=1,2", "sampler_steps=2", "batches=2", "batch_size=3"]


@pytest.fixture(scope="module")
def held_out_store(tmp_path_factory) -> Path:
    """6 episodes of 16 frames; their content hashes put 1 in val at val_fraction 0.5 (at least one, as asserted)."""
    root = write_store(tmp_path_factory.mktemp("eval") / "store", [textured_episode(16, seed=i) for i in range(6)],
                       val_fraction=0.5)  # fmt: skip
    manifest = json.loads((root / "manifest.json").read_text())
    assert {e["split"] for e in manifest["episodes"]} == {"train", "val"}
    return root


@pytest.fixture(scope="module")
def run_dir(held_out_store, tmp_path_factory) -> Path:
    """A debug run of 4 steps (checkpoints at steps 2 and 4, and an export)."""
    run = tmp_path_factory.mktemp("eval") / "run"
    train_in_process(run, [*TINY, f"data.path={held_out_store}", "trainer.max_steps=4", "trainer.checkpoint_every=2",
                           "trainer.log_every=2"])  # fmt: skip
    return run


def test_eval_writes_every_key_and_is_reproducible(run_dir, held_out_store, tmp_path, one_thread, capsys):
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        assert main([f"checkpoint={run_dir}", f"data.path={held_out_store}", f"out={out}", "seed=3", *FAST]) == 0
    printed = capsys.readouterr().out
    first, second = (json.loads(o.read_text()) for o in outs)
    assert first == second
    assert first["split"] == "val" and first["horizons"] == [1, 2] and first["dropped_horizons"] == []
    assert first["batches"] == 2 and first["windows"] == 6 and first["context_steps"] == 2
    act = first["actions"]
    assert 0 <= act["token_accuracy"] <= 1 and act["action_loss"] > 0
    assert set(act["mse"]) == {"model", "train_mean", "repeat_last"} and all(v >= 0 for v in act["mse"].values())
    arm = act["per_embodiment"]["arm"]
    assert arm["dims"] == 2 and arm["windows"] == 6 and all(len(arm[m]) == 2 for m in act["mse"])
    assert first["sampler_steps"] == [1, 2] and first["verdict_sampler_steps"] == 2  # 1 step and sampler_steps
    for h in ("1", "2"):
        row = first["world_model"][h]
        assert set(row) == {"copy_last", "sampler_steps"} and list(row["sampler_steps"]) == ["1", "2"]
        copy_last = row["copy_last"]
        assert copy_last["frames"] == 12 and copy_last["psnr"] > 0  # 6 windows x 2 cameras
        for sampled in row["sampler_steps"].values():
            assert set(sampled) == {"model", "shuffled_actions", "action_use", "gain_over_copy_last"}
            for m in ("model", "shuffled_actions"):
                assert sampled[m]["frames"] == 12
                assert sampled[m]["psnr"] > 0 and -1 <= sampled[m]["ssim"] <= 1
            for metric in ("psnr", "ssim"):
                use = sampled["model"][metric] - sampled["shuffled_actions"][metric]
                assert sampled["action_use"][metric] == pytest.approx(use)
                gain = sampled["model"][metric] - copy_last[metric]
                assert sampled["gain_over_copy_last"][metric] == pytest.approx(gain)
    bars = [v["bar"] for v in first["verdicts"]]
    assert len(bars) == 3 and bars[0].startswith("beats copy-last") and bars[1].startswith("uses actions")
    for verdict in first["verdicts"]:
        assert set(verdict) == {"bar", "passed", "detail"} and verdict["passed"] in (True, False, None)
        assert line(verdict) in printed  # one line each, after the tables
    assert printed.index("World model") < printed.index(line(first["verdicts"][0]))
    # horizon 4 is not evaluated: the action-use bar is n/a, never a silent pass
    assert first["verdicts"][1]["passed"] is None and "horizon 4 was not evaluated" in first["verdicts"][1]["detail"]


def test_horizons_longer_than_the_episodes_are_dropped_and_said(run_dir, held_out_store, one_thread):
    # 16-frame episodes at stride 2 hold 2 context steps + horizons up to 6
    result = evaluate(EvalConfig(str(run_dir), str(held_out_store), horizons=(1, 16), batches=1, batch_size=2,
                                 sampler_steps=1))  # fmt: skip
    assert result["horizons"] == [1] and result["dropped_horizons"] == [16]
    assert any("[16]" in note for note in result["notes"])
    assert list(result["world_model"]) == ["1"]
    assert result["sampler_steps"] == [1] and list(result["world_model"]["1"]["sampler_steps"]) == ["1"]
    assert result["verdicts"][1]["passed"] is None and "horizon 4 was not evaluated" in result["verdicts"][1]["detail"]


def test_actions_are_scored_on_demonstrations_unless_asked_for_all(run_dir, tmp_path, one_thread):
    """A DART or exploring episode's executed actions are no yardstick for the policy: by default neither the model
    nor the baselines are scored on them (the action bar is n/a, and a note says why), while the frames are; an
    expert episode and one with no recorded kind count; actions_on=all scores every window."""
    episodes = [textured_episode(16, seed=i) for i in range(4)]
    for ep, kind in zip(episodes, (1, 2, 1, 2), strict=True):  # dart, explore
        ep.layout = {"mt1_seed": 0, "mt1_index": 0, "kind": kind}
    perturbed = write_store(tmp_path / "perturbed", episodes, val_fraction=1.0)
    cfg = EvalConfig(str(run_dir), str(perturbed), horizons=(1,), batches=1, batch_size=3, sampler_steps=1)
    loaded = from_pretrained(run_dir)
    demos, every = evaluate(cfg, loaded), evaluate(dataclasses.replace(cfg, actions_on="all"), loaded)
    assert demos["actions_on"] == "demonstrations" and any("dart, explore episodes" in n for n in demos["notes"])
    assert demos["actions"]["per_embodiment"] == {} and set(demos["actions"]["mse"].values()) == {None}
    assert demos["actions"]["token_accuracy"] is None and demos["verdicts"][2]["passed"] is None
    assert every["actions"]["per_embodiment"]["arm"]["windows"] == 3 and every["verdicts"][2]["passed"] is not None
    assert demos["world_model"] == every["world_model"]  # the frames are scored alike
    printed = io.StringIO()
    render(demos, Console(file=printed, width=200))
    assert "0 of the 3 val" in printed.getvalue()  # the windows whose actions were scored
    for ep, kind in zip(episodes, (0, None, 1, 2), strict=True):  # expert, no record, dart, explore
        ep.layout = None if kind is None else {"mt1_seed": 0, "mt1_index": 0, "kind": kind}
    mixed = write_store(tmp_path / "mixed", episodes, val_fraction=1.0)
    both = {on: evaluate(EvalConfig(str(run_dir), str(mixed), horizons=(1,), batches=4, batch_size=4, sampler_steps=1,
                                    actions_on=on), loaded)["actions"]["per_embodiment"]["arm"]["windows"]
            for on in ("demonstrations", "all")}  # fmt: skip
    assert 0 < both["demonstrations"] < both["all"]


def test_checkpoint_accepts_run_checkpoint_and_export_folders(run_dir, tmp_path):
    exported = load_file(str(run_dir / "export" / "model.safetensors"))
    for path in (run_dir, run_dir / "export"):
        loaded = from_pretrained(path)
        assert loaded.source.startswith("export")
        for k, v in loaded.model.state_dict().items():
            torch.testing.assert_close(v, exported[k])
    step2 = run_dir / "checkpoints" / "step-00000002"
    weights = load_file(str(step2 / "model.safetensors"))
    loaded = from_pretrained(step2)
    assert loaded.source == f"checkpoint {step2}" and loaded.diffusion.kind == "flow"
    assert all(torch.equal(v, weights[k]) for k, v in loaded.model.state_dict().items())
    # before the run exported: the model config is rebuilt from the checkpoint's config.yaml
    bare = tmp_path / "run"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("export"))
    rebuilt = from_pretrained(bare / "checkpoints" / "step-00000002")
    assert rebuilt.model.cfg == loaded.model.cfg
    assert from_pretrained(bare).source.endswith("step-00000004")  # a run folder without export: latest checkpoint
    assert loaded.builder.cfg == rebuilt.builder.cfg


def test_eval_runs_on_a_checkpoint_folder(run_dir, held_out_store, one_thread):
    result = evaluate(EvalConfig(str(run_dir / "checkpoints" / "step-00000004"), str(held_out_store), horizons=(1,),
                                 batches=1, batch_size=2, sampler_steps=1))  # fmt: skip
    assert result["loaded"].startswith("checkpoint") and result["windows"] == 2


def test_bad_input_gives_a_clear_error(run_dir, held_out_store, tmp_path, capsys):
    assert main([f"checkpoint={tmp_path / 'missing'}", f"data.path={held_out_store}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([f"checkpoint={tmp_path / 'empty'}", f"data.path={held_out_store}"]) == 2
    assert "not an export, run or checkpoint folder" in capsys.readouterr().err
    train_only = make_store(tmp_path / "train_only", n=2)  # val_fraction 0: no val episode
    assert main([f"checkpoint={run_dir}", f"data.path={train_only}"]) == 2
    err = capsys.readouterr().err
    assert "no episode in split 'val'" in err and "['train']" in err
    assert main([f"checkpoint={run_dir}", f"data.path={tmp_path / 'nostore'}"]) == 2
    assert "not a robofm episode store" in capsys.readouterr().err
    assert main([f"checkpoint={run_dir}", f"data.path={held_out_store}", "verdict_sampler_steps=3"]) == 2
    assert "verdict_sampler_steps must be 1 or sampler_steps (10), not 3" in capsys.readouterr().err
    assert main([f"checkpoint={run_dir}", f"data.path={held_out_store}", "actions_on=experts"]) == 2
    assert "actions_on must be demonstrations or all, not 'experts'" in capsys.readouterr().err
    for argv in ([f"checkpoint={run_dir}"], [f"checkpoint={run_dir}", "data.path=x", "colour=red"],
                 [f"checkpoint={run_dir}", "data.path=x", "seed=one"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


def test_the_command_exits_2_without_a_traceback(tmp_path, held_out_store):
    script = Path(sys.executable).with_name("robofm-eval")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "robofm.eval"]
    proc = subprocess.run([*command, f"checkpoint={tmp_path / 'missing'}", f"data.path={held_out_store}"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr


def test_eval_curve_scores_every_checkpoint_once_and_prints_a_row_each(run_dir, held_out_store, tmp_path, one_thread,
                                                                       capsys):  # fmt: skip
    import runpy

    curve = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "eval_curve.py"), run_name="eval_curve")
    out = tmp_path / "curve"
    keys = ["horizons=1,2", "batches=2", "batch_size=3"]
    curve["main"]([str(run_dir), str(held_out_store), "--out", str(out), *keys])
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| step | h1 vs copy-last | h2 vs copy-last | action use h2 |")
    assert [r.split("|")[1].strip() for r in table[2:]] == ["2", "4"]
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert set(first) == {"eval-step-2.json", "eval-step-4.json"}
    assert Path(json.loads((out / "eval-step-4.json").read_text())["checkpoint"]).name == "step-00000004"
    (out / "eval-step-2.json").unlink()  # an interrupted curve: only the missing checkpoint is scored again
    curve["main"]([str(run_dir), str(held_out_store), "--out", str(out), *keys])
    assert capsys.readouterr().out.splitlines() == table
    assert (out / "eval-step-4.json").stat().st_mtime_ns == first["eval-step-4.json"]
    curve["main"]([str(run_dir), str(held_out_store), "--out", str(out), "horizons=1", "batches=2", "batch_size=3"])
    assert capsys.readouterr().out.splitlines()[0] == "| step | h1 vs copy-last | action use h1 | " \
        "action MSE (model / repeat-last / train-mean) |"  # other settings: every checkpoint scored again
