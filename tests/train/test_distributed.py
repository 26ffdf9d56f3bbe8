"""Distributed training through torchrun on the CPU (gloo, 2 processes): DDP gives the losses of one process with the
same global batch, an FSDP2 run's checkpoint and export load in one process, and only rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robofm.models.pretrained import from_pretrained
from tests.conftest import write_store
from tests.models.conftest import textured_episode
from tests.train.conftest import TINY, read_metrics, step_losses, train_in_process

B, STEPS = 2, 5  # samples per rank and step; the one-process reference draws 2 * B
# fp32, deterministic, every frame noisy (no random layout) and one embodiment with every camera: each sample has
# as many target tokens as any other, so the mean of the two ranks' mean losses is the mean over the global batch.
# 11 samples per epoch: 2 steps an epoch (STEPS crosses two epoch boundaries), and rank 0 holds one sample more
# than rank 1. The EMA is kept (sharded under FSDP) and exported; validation runs every 2 steps.
COMMON = [*TINY, "trainer.device=cpu", "trainer.precision=fp32", "trainer.deterministic=true", "sequence.noisy=all",
          f"trainer.max_steps={STEPS}", "trainer.log_every=1", "trainer.checkpoint_every=3", "trainer.val_every=2",
          "data.samples_per_epoch=11", "data.val_batches=1", "optim.ema=0.9"]  # fmt: skip
TOL = 1e-5


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """8 episodes of 16 frames, one of them in the val split."""
    root = tmp_path_factory.mktemp("dist") / "store"
    return write_store(root, [textured_episode(16, seed=i) for i in range(8)], val_fraction=0.4)


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory) -> Path:
    """One process, global batch 2 * B."""
    run = tmp_path_factory.mktemp("dist") / "single"
    train_in_process(run, [*COMMON, f"data.path={store}", f"data.batch_size={2 * B}"])
    return run


def torchrun(run_dir: Path, overrides: list[str], nproc: int = 2) -> None:
    """`torchrun --standalone --nproc_per_node=NPROC -m robofm.train OVERRIDES hydra.run.dir=RUN_DIR`, one thread
    per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "robofm.train", *overrides, f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"


def assert_same_losses(run: Path, reference: Path, steps: range = range(1, STEPS + 1)) -> None:
    got, want = step_losses(run), step_losses(reference)
    assert sorted(got) == list(steps)
    for s in steps:
        assert abs(got[s] - want[s]) <= TOL, f"step {s}: {got[s]} vs {want[s]}"


def assert_written_once(run: Path) -> None:
    """One metrics line per logged step and validation (two writers would double them), and only complete
    checkpoints (two writers racing on the same step would leave a temporary folder or fail)."""
    metrics = read_metrics(run)
    train = [m["step"] for m in metrics if "loss" in m]
    val = [m["step"] for m in metrics if "val/total" in m]
    assert train == list(range(1, STEPS + 1))
    assert val == list(range(2, STEPS + 1, 2))
    assert len(metrics) == len(train) + len(val)
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert names == {"latest", "step-00000003", f"step-{STEPS:08d}"}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], atol=TOL, rtol=0, msg=k)


def test_ddp_matches_one_process_with_the_same_global_batch(store, reference, tmp_path):
    run = tmp_path / "ddp"
    # each rank accumulates two micro-batches of one sample: only the second backward all-reduces
    torchrun(run, [*COMMON, "trainer=ddp", f"data.path={store}", f"data.batch_size={B}", "optim.accumulation=2"])
    assert_same_losses(run, reference)
    val, val_ref = ({m["step"]: m["val/total"] for m in read_metrics(r) if "val/total" in m} for r in (run, reference))
    assert val.keys() == val_ref.keys() and all(abs(val[s] - val_ref[s]) <= TOL for s in val)
    assert_written_once(run)
    assert_same_weights(from_pretrained(run).model.state_dict(), from_pretrained(reference).model.state_dict())


def test_fsdp_checkpoint_and_export_load_in_one_process(store, reference, tmp_path):
    run = tmp_path / "fsdp"
    torchrun(run, [*COMMON, "trainer=fsdp", f"data.path={store}", f"data.batch_size={B}", "optim.accumulation=2"])
    assert_same_losses(run, reference)
    assert_written_once(run)
    # the export (EMA weights gathered from the shards) is the full model a single process loads
    assert_same_weights(from_pretrained(run).model.state_dict(), from_pretrained(reference).model.state_dict())
    # one process resumes the sharded run's checkpoint (full weights, optimizer, EMA, data position) and goes on
    # exactly as the sharded run did
    resumed = tmp_path / "resumed"
    ckpt = run / "checkpoints" / "step-00000003"
    train_in_process(resumed, [*COMMON, f"data.path={store}", f"data.batch_size={2 * B}", f"resume={ckpt}"])
    assert_same_losses(resumed, run, range(4, STEPS + 1))
    assert_same_weights(from_pretrained(resumed).model.state_dict(), from_pretrained(run).model.state_dict())


def test_fsdp_resumes_a_one_process_checkpoint(store, reference, tmp_path):
    """The other way round: a sharded run picks up a one-process checkpoint (weights, optimizer state keyed by
    parameter name, EMA) and continues as the one process did."""
    run = tmp_path / "fsdp"
    ckpt = reference / "checkpoints" / "step-00000003"
    torchrun(run, [*COMMON, "trainer=fsdp", f"data.path={store}", f"data.batch_size={B}", f"resume={ckpt}"])
    assert_same_losses(run, reference, range(4, STEPS + 1))
    assert_same_weights(from_pretrained(run).model.state_dict(), from_pretrained(reference).model.state_dict())
