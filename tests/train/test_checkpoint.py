"""Checkpoint files: written atomically, rotated, found again after any interrupted save, read safely."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from robofm.errors import UsageError
from robofm.models.pretrained import latest_checkpoint, resolve_checkpoint
from robofm.train.checkpoint import load_checkpoint, save_checkpoint
from robofm.train.loop import _get_rng, _set_rng


def _save(run, step: int, keep_last: int = 3, **kw):
    weights = {"w": torch.full((2, 3), float(step)), "b": torch.arange(3.0)}
    return save_checkpoint(run, step, weights, {"step": step, "rng": _get_rng()}, f"step: {step}\n", keep_last, **kw)


def test_round_trip_with_weights_only_loading(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    path = _save(tmp_path, 7, ema={"w": torch.ones(2, 3)})
    expected = (torch.rand(2), np.random.rand(), random.random())
    weights, state, ema = load_checkpoint(path)
    assert torch.equal(weights["w"], torch.full((2, 3), 7.0)) and torch.equal(ema["w"], torch.ones(2, 3))
    assert (path / "config.yaml").read_text() == "step: 7\n"
    _set_rng(state["rng"])  # the RNG states survive torch.load(weights_only=True) and restore every generator
    again = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(again[0], expected[0]) and again[1:] == expected[1:]


def test_keeps_the_last_k_and_latest_names_the_newest(tmp_path):
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, keep_last=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000030", "step-00000040"]
    assert latest_checkpoint(tmp_path) == root / "step-00000040"
    assert resolve_checkpoint(tmp_path) == resolve_checkpoint(root) == resolve_checkpoint(root / "step-00000040")


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path):
    """A run resumed from an older checkpoint writes steps below those left behind by the abandoned branch."""
    _save(tmp_path, 40, keep_last=1)
    _save(tmp_path, 30, keep_last=1)
    assert latest_checkpoint(tmp_path).name == "step-00000030"
    assert load_checkpoint(latest_checkpoint(tmp_path))[1]["step"] == 30


def test_interrupted_saves_leave_a_loadable_checkpoint(tmp_path, caplog):
    _save(tmp_path, 10)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-00000020-999").mkdir()  # a write killed before its rename: never read, removed by the next
    (root / ".tmp-step-00000020-999" / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step-00000010"
    (root / "latest").write_text("step-00000020")  # `latest` naming a folder that is gone (a replaced step)
    assert latest_checkpoint(tmp_path).name == "step-00000010"
    assert "newest complete" in caplog.text
    (root / "latest").unlink()  # killed between the first rename and the first pointer
    assert latest_checkpoint(tmp_path).name == "step-00000010"
    _save(tmp_path, 20)
    assert not list(root.glob(".tmp-*")) and latest_checkpoint(tmp_path).name == "step-00000020"


def test_no_checkpoint_and_damaged_checkpoints_are_clear(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(UsageError, match="neither a checkpoint folder"):
        resolve_checkpoint(tmp_path)
    path = _save(tmp_path, 10)
    (path / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(UsageError, match=f"cannot read checkpoint {path}"):
        load_checkpoint(path)
