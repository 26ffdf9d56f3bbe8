"""Resume is exact: on CPU in fp32 with deterministic algorithms, 20 uninterrupted steps equal 10 steps, a SIGKILL
and 10 resumed steps, bitwise; and a kill in the middle of writing a checkpoint leaves the previous one in use.

The killed runs are real `robofm-train` processes that SIGKILL themselves at an exact point of a checkpoint save
(the ROBOFM_TEST_KILL_AT hook of robofm/train/checkpoint.py); the uninterrupted and resumed runs run in-process."""

from __future__ import annotations

import signal

import pytest
import torch

from robofm.models.pretrained import latest_checkpoint
from robofm.train import loop
from robofm.train.checkpoint import KILL_AT, load_checkpoint
from tests.train.conftest import TINY, final_weights, read_metrics, run_cli, step_losses, train_in_process

# Batch 4: 24 samples are 6 steps per epoch, so step 10 falls in the middle of the second epoch; with 40, step 10
# ends the first epoch exactly.
SAMPLES_PER_EPOCH = {"mid-epoch": 24, "epoch-boundary": 40}


def _overrides(store, workers: int, samples_per_epoch: int, checkpoint_every: int = 10) -> list[str]:
    return TINY + [f"data.path={store}", f"data.num_workers={workers}", f"data.samples_per_epoch={samples_per_epoch}",
                   "trainer.max_steps=20", f"trainer.checkpoint_every={checkpoint_every}", "trainer.log_every=1",
                   "trainer.deterministic=true", "optim.ema=0.9"]  # fmt: skip


def _assert_same_run(run, reference) -> None:
    """The same loss at every step (JSON keeps every bit of a float), and the same final weights and EMA, bitwise."""
    assert step_losses(run) == step_losses(reference)
    assert sorted(step_losses(run)) == list(range(1, 21))
    for kind in ("model", "ema"):
        got, want = final_weights(run, kind), final_weights(reference, kind)
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), f"{kind} {name}"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("where", SAMPLES_PER_EPOCH)
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, tiny_store, workers, where):
    overrides = _overrides(tiny_store, workers, SAMPLES_PER_EPOCH[where])
    straight = tmp_path / "straight"
    train_in_process(straight, overrides)

    resumed = tmp_path / "resumed"
    killed = run_cli([*overrides, f"hydra.run.dir={resumed}"], env={KILL_AT: "10:done"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert max(step_losses(resumed)) == 10
    _, state, _ = load_checkpoint(latest_checkpoint(resumed))
    assert (state["step"], state["epoch"], state["batch"]) == ((10, 1, 4) if where == "mid-epoch" else (10, 0, 10))

    train_in_process(resumed, [*overrides, "resume=auto"])
    _assert_same_run(resumed, straight)
    assert {"event": "resume", "step": 10}.items() <= read_metrics(resumed)[10].items()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["written", "renamed"])
def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_store, stage):
    """Killed after the temporary folder of step 10 is complete (before its rename), or after the rename but before
    `latest` moves: `latest` still names step 5, which loads, and resume=auto goes on from it to the same end."""
    overrides = _overrides(tiny_store, 0, 24, checkpoint_every=5)
    run = tmp_path / "run"
    killed = run_cli([*overrides, f"hydra.run.dir={run}"], env={KILL_AT: f"10:{stage}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = run / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step-00000005"
    leftovers = [p.name for p in checkpoints.glob(".tmp-*")]
    if stage == "written":
        assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-step-00000010-")
        assert not (checkpoints / "step-00000010").exists()
    else:
        assert not leftovers and (checkpoints / "step-00000010" / "state.pt").is_file()
    assert latest_checkpoint(run).name == "step-00000005"
    _, state, _ = load_checkpoint(latest_checkpoint(run))
    assert state["step"] == 5

    train_in_process(run, [*overrides, "resume=auto"])
    [resume] = [m for m in read_metrics(run) if m.get("event") == "resume"]
    assert resume["step"] == 5 and resume["from"].endswith("step-00000005")
    assert not list(checkpoints.glob(".tmp-*"))  # the next save cleared the leftover
    straight = tmp_path / "straight"
    train_in_process(straight, overrides)
    _assert_same_run(run, straight)


def test_resume_from_a_given_checkpoint_into_a_new_run_folder(tmp_path, tiny_store, monkeypatch):
    overrides = _overrides(tiny_store, 0, 24)
    straight = tmp_path / "straight"
    train_in_process(straight, overrides)
    branch = tmp_path / "branch"
    reads = []
    monkeypatch.setattr(loop, "load_checkpoint", lambda path: reads.append(path) or load_checkpoint(path))
    train_in_process(branch, [*overrides, f"resume={straight / 'checkpoints' / 'step-00000010'}"])
    assert reads == [straight / "checkpoints" / "step-00000010"]  # resuming reads the checkpoint once
    assert min(step_losses(branch)) == 11
    assert step_losses(branch) == {s: v for s, v in step_losses(straight).items() if s > 10}
    got, want = final_weights(branch), final_weights(straight)
    assert all(torch.equal(got[k], want[k]) for k in want)
