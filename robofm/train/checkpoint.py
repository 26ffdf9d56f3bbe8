"""Checkpoints written atomically and read safely.

    RUN/checkpoints/step-00000200/   model.safetensors   weights (and ema.safetensors with EMA)
                                     state.pt            optimizer, scheduler, data position, guard, RNG states
                                     config.yaml         the resolved config
    RUN/checkpoints/latest           the name of the newest complete checkpoint

A checkpoint is written to a temporary folder, every file fsynced, then renamed into place, and only then does
`latest` (itself replaced atomically) point to it: a kill at any moment leaves the previous checkpoint loadable.
state.pt holds tensors and plain containers only and is read with torch.load(weights_only=True). Leftover
`.tmp-*` folders (a write that was killed) are never read, and the next save removes them. Finding the latest
checkpoint of a run (`latest_checkpoint`, `resolve_checkpoint`) belongs to loading: robofm.models.pretrained.

Test hook: with ROBOFM_TEST_KILL_AT=STEP:STAGE in the environment, the process SIGKILLs itself while saving
checkpoint STEP, at STAGE: `written` (temporary folder complete, before the rename), `renamed` (before `latest`
moves) or `done` (after). The resume tests use it to kill a run at an exact point of a save; it is a real kill.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robofm.errors import UsageError
from robofm.models.pretrained import LATEST, complete_checkpoints

KILL_AT = "ROBOFM_TEST_KILL_AT"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write) -> None:
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _test_kill_point(step: int, stage: str) -> None:
    if os.environ.get(KILL_AT) == f"{step}:{stage}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(run_dir: Path, step: int, weights: dict[str, torch.Tensor], state: dict, config_yaml: str,
                    keep_last: int = 3, ema: dict[str, torch.Tensor] | None = None) -> Path:  # fmt: skip
    """Write checkpoint `step` atomically, point `latest` at it, and delete all but the newest keep_last."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    for stale in root.glob(".tmp-*"):  # a save that was killed: one process writes a run's checkpoints
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    for name, tensors in (("model", weights), ("ema", ema)):
        if tensors is not None:
            contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
            _write_file(tmp / f"{name}.safetensors", lambda p, t=contiguous: save_file(t, str(p)))
    _write_file(tmp / "state.pt", lambda p: torch.save(state, p))
    _write_file(tmp / "config.yaml", lambda p: p.write_text(config_yaml))
    _fsync_dir(tmp)
    _test_kill_point(step, "written")
    if final.exists():  # the same step written again (a rerun after a rollback or an older resume): replace it
        shutil.rmtree(final)  # a kill before the rename below leaves `latest` dangling: latest_checkpoint copes
    os.replace(tmp, final)
    _fsync_dir(root)
    _test_kill_point(step, "renamed")
    pointer = root / f".{LATEST}.tmp"
    _write_file(pointer, lambda p: p.write_text(final.name))
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)
    if keep_last > 0:  # by step, never the one just written (an older resume may have left later steps behind)
        for old in [p for p in complete_checkpoints(root) if p != final][: -(keep_last - 1) or None]:
            shutil.rmtree(old, ignore_errors=True)
    _test_kill_point(step, "done")
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor] | None]:
    """(weights, state, ema weights or None) of a checkpoint folder."""
    path = Path(path)
    try:
        weights = load_file(str(path / "model.safetensors"))
        state = torch.load(path / "state.pt", weights_only=True)
        ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").is_file() else None
    except (OSError, RuntimeError, SafetensorError, pickle.UnpicklingError) as e:
        raise UsageError(f"cannot read checkpoint {path}: {e}") from e
    return weights, state, ema
