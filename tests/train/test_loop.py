"""A debug run learns, logs what a user reads (metrics.jsonl, TensorBoard), and exports a base that loads back
into the same model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from robofm.models.pretrained import from_pretrained
from tests.train.conftest import TINY, read_metrics, step_losses, train_in_process


def test_debug_run_lowers_the_loss_logs_it_and_exports_the_model(tmp_path, tiny_store):
    run = tmp_path / "run"
    trainer = train_in_process(run, TINY + [f"data.path={tiny_store}", "trainer.max_steps=50", "trainer.log_every=1",
                                            "optim.lr=1e-3", "trainer.tensorboard=true"])  # fmt: skip
    losses = list(step_losses(run).values())
    assert len(losses) == 50
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    first = read_metrics(run)[0]
    assert first["step"] == 1
    assert {"loss", "action", "frame", "grad_norm", "lr", "tokens_per_s", "data_wait"} <= first.keys()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "latest").read_text() == "step-00000050"

    pretrained = from_pretrained(run)
    items = [trainer.train_ds[i] for i in range(3)]
    seq, again = trainer.builder(items), pretrained.builder(items)  # the exported tokenization tokenizes alike
    assert all(torch.equal(getattr(seq, k), getattr(again, k)) for k in ("ids", "patches", "state", "targets"))
    model = trainer.model.eval()
    with torch.no_grad():
        out, want = pretrained.model(again), model(seq)
        assert torch.equal(out.hidden, want.hidden) and torch.equal(out.logits, want.logits)


def test_the_export_and_checkpoints_record_the_frame_diffusion(tmp_path, tiny_store):
    """Imagining frames needs what the frame head was trained to predict: from_pretrained on an export and on a
    checkpoint both rebuild the run's objective.frame_* settings, not the defaults."""
    from robofm.models.pretrained import from_pretrained

    run = tmp_path / "run"
    train_in_process(run, TINY + [f"data.path={tiny_store}", "trainer.max_steps=2", "objective.frame_prediction=x0",
                                  "objective.frame_target=delta", "objective.logit_mean=0.5"])  # fmt: skip
    want = {"kind": "flow", "logit_mean": 0.5, "logit_std": 1.0, "prediction": "x0", "target": "delta"}
    assert from_pretrained(run).diffusion.settings() == want
    assert from_pretrained(run / "checkpoints" / "step-00000002").diffusion.settings() == want


def test_ema_weights_are_exported_when_kept(tmp_path, tiny_store):
    run = tmp_path / "run"
    trainer = train_in_process(run, TINY + [f"data.path={tiny_store}", "trainer.max_steps=4", "optim.ema=0.5"])
    exported = from_pretrained(run).model.state_dict()
    assert (run / "checkpoints" / "step-00000004" / "ema.safetensors").is_file()
    for name in trainer.model.state_dict():
        assert torch.equal(exported[name], trainer.ema[name])
    assert any(not torch.equal(exported[n], w) for n, w in trainer.model.state_dict().items())


def test_the_ema_decay_warms_up_so_a_fine_tune_forgets_its_start_within_tens_of_steps():
    from robofm.train.loop import ema_decay

    assert ema_decay(0.99, 0) == pytest.approx(0.1) and ema_decay(0.99, 50) == pytest.approx(51 / 60)
    assert ema_decay(0.99, 10_000) == 0.99 and ema_decay(0.5, 100) == 0.5
    weight_of_start = 1.0
    for step in range(1, 51):  # the start's share of the EMA after 50 updates (the first one copies the weights)
        weight_of_start *= ema_decay(0.99, step)
    assert weight_of_start < 0.01 < 0.99**50


def test_an_adaln_run_exports_and_loads_back_conditioned(tmp_path, tiny_store):
    """model.adaln=true trains, exports its conditioning, and loads back the same from the export and from a
    checkpoint of a run that has not exported (rebuilt from config.yaml)."""
    run = tmp_path / "run"
    trainer = train_in_process(run, TINY + [f"data.path={tiny_store}", "trainer.max_steps=2", "model.adaln=true"])
    exported = from_pretrained(run).model
    assert exported.cfg.adaln and exported.cfg.action_chunk_dim == trainer.builder.cfg.stride * trainer.builder.action_dim
    assert any(".ada." in name for name in exported.state_dict())
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("export"))
    assert from_pretrained(bare / "checkpoints" / "step-00000002").model.cfg == exported.cfg


def test_a_run_with_shape_overrides_exports_and_loads_back_with_that_shape(tmp_path, tiny_store):
    """model.dim/depth/heads/ffn_dim replace the size's preset; the export's model.json, and a checkpoint's
    config.yaml before any export, both rebuild that shape."""
    run = tmp_path / "run"
    shape = {"dim": 48, "depth": 3, "heads": 2, "ffn_dim": 96}
    overrides = [f"model.{k}={v}" for k, v in shape.items()]
    trainer = train_in_process(run, TINY + [f"data.path={tiny_store}", "trainer.max_steps=1", *overrides])
    recorded = json.loads((run / "export" / "model.json").read_text())
    assert {k: recorded[k] for k in shape} == shape and recorded["size"] == "debug"
    n = trainer.model.num_parameters()
    shutil.rmtree(run / "export")  # a run killed before it exported: its checkpoint's config.yaml holds the shape
    for loaded in (trainer.model, from_pretrained(run).model):
        assert {k: getattr(loaded.cfg, k) for k in shape} == shape and loaded.num_parameters() == n


def test_pretraining_refuses_a_corpus_with_a_held_out_task(tmp_path):
    """An episode of an ML45 test task (known by its instruction) in a pretraining corpus would contaminate the
    few-shot benchmark: robofm-train names the store and the task, and trains only when told it may."""
    from robofm.errors import UsageError
    from robofm.sim.tasks import INSTRUCTIONS
    from tests.models.conftest import make_store

    store = make_store(tmp_path / "store", n=4, length=16, task=INSTRUCTIONS["box-close-v3"])
    overrides = TINY + [f"data.path={store}", "trainer.max_steps=1"]
    with pytest.raises(UsageError, match=r"store: holds episodes of box-close-v3, test tasks of MetaWorld ML45"):
        train_in_process(tmp_path / "refused", overrides)
    trainer = train_in_process(tmp_path / "allowed", overrides + ["data.allow_held_out_tasks=true"])
    assert trainer.pos.step == 1
