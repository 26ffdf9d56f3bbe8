"""Shared fixtures for training tests: a tiny store, and runs of the training command in-process (Hydra's compose
API, for speed) or as a `robofm-train` subprocess (for what needs a real process: the CLI, SIGKILL)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from safetensors.torch import load_file

from robofm.errors import HeadlessGLError
from robofm.train.config import TrainConfig, register
from tests.conftest import torch_threads
from tests.models.conftest import make_store

# The debug experiment on 8x8 frames: 4 x 4 patches, 2-step windows, batch 4, no TensorBoard (its import is slow).
TINY = ["experiment=debug", "tokenizer.patch_size=4", "data.batch_size=4", "data.num_workers=0",
        "trainer.tensorboard=false", "trainer.val_every=0"]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """4 episodes of 16 frames (2 cameras of 8x8): 48 two-step windows at stride 2."""
    return make_store(tmp_path_factory.mktemp("train") / "store", n=4, length=16)


def compose_config(overrides: list[str]) -> tuple[TrainConfig, str]:
    """The typed config and its resolved YAML, as `robofm-train OVERRIDES` would compose them."""
    register()
    with initialize_config_module(config_module="robofm.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return OmegaConf.to_object(cfg), OmegaConf.to_yaml(cfg, resolve=True)


def train_in_process(run_dir: Path, overrides: list[str]):
    """Run `robofm-train OVERRIDES hydra.run.dir=RUN_DIR` in this process; returns the Trainer after fit().

    One thread, as the subprocess runs get (OMP_NUM_THREADS=1): CPU kernels are then bitwise reproducible across
    the two. Global switches a run sets (deterministic algorithms, thread count) are restored afterwards."""
    from robofm.train.loop import Trainer

    typed, yaml = compose_config(overrides)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with torch_threads(1):
            trainer = Trainer(typed, run_dir, yaml)
            trainer.fit()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return trainer


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """`robofm-train ARGS` (`python -m robofm.train ARGS` where the script is not installed) in a fresh process, on
    one thread."""
    script = Path(sys.executable).with_name("robofm-train")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "robofm.train"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*command, *args], env=full_env, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)  # fmt: skip


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def step_losses(run_dir: Path) -> dict[int, float]:
    """The loss of each logged step; a step logged again after a resume or rollback counts with its last value."""
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m and "event" not in m}


def final_weights(run_dir: Path, kind: str = "model") -> dict[str, torch.Tensor]:
    """The weights (kind "model") or EMA weights ("ema") of the checkpoint `latest` names."""
    latest = (Path(run_dir) / "checkpoints" / "latest").read_text().strip()
    return load_file(str(Path(run_dir) / "checkpoints" / latest / f"{kind}.safetensors"))


def require_sim_extra() -> None:
    """Skips without MetaWorld and MuJoCo, found without importing them (mujoco's import fails without a GL)."""
    if importlib.util.find_spec("metaworld") is None or importlib.util.find_spec("mujoco") is None:
        pytest.skip("the sim extra (pip install 'robofm[sim]') is not installed")


@pytest.fixture(scope="module")
def headless_gl() -> str:
    """The MUJOCO_GL backend that renders here; skips (naming the package to install) where none does."""
    require_sim_extra()
    from robofm.sim import gl

    try:
        return gl.find_backend()
    except HeadlessGLError as e:
        pytest.skip(str(e))
