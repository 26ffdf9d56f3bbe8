"""`pip install .` ships the Hydra configs: a wheel built from the checkout holds every module of robofm/ and every
config of conf/, and `robofm-train` installed from it composes them from a folder outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


def run(*command: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """The stdout of COMMAND, which must succeed."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def pip(*args: str) -> None:
    run(sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args)


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_robofm_train_composes_them(tmp_path):
    # offline, with the setuptools of this environment (pyproject.toml asks for >= 77)
    pytest.importorskip("setuptools", minversion="77")
    # built from a copy of the sources, so that the checkout gets no build/ or egg-info folders
    source = tmp_path / "source"
    for name in ("robofm", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip("wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "dist"))
    (wheel,) = (tmp_path / "dist").glob("robofm-*.whl")

    shipped = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "robofm").rglob("*.py")}
    configs = {"robofm/conf/" + p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert modules - shipped == set(), "add its package to pyproject.toml's packages"
    assert configs - shipped == set(), "see pyproject.toml's package-data"

    installed = tmp_path / "installed"
    pip("install", "--no-deps", "--target", str(installed), str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    where = run(sys.executable, "-c", "import robofm.conf; print(robofm.conf.__file__)", cwd=elsewhere, env=env)
    assert Path(where.strip()).is_relative_to(installed), where

    job = run(str(installed / "bin" / "robofm-train"), "--cfg", "job", "experiment=demo", cwd=elsewhere, env=env)
    printed = yaml.safe_load(job)
    demo = yaml.safe_load((ROOT / "conf" / "experiment" / "demo.yaml").read_text())
    assert printed["trainer"]["max_steps"] == demo["trainer"]["max_steps"]
    size = next(d["override /model"] for d in demo["defaults"] if isinstance(d, dict) and "override /model" in d)
    assert printed["model"]["size"] == size and printed["objective"]["logit_mean"] == demo["objective"]["logit_mean"]
    assert not list(elsewhere.iterdir())  # --cfg job writes no run folder
