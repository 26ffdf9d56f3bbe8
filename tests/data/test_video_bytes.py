"""What the tests write and what robofm reports must not depend on the machine's core count (issue 26).

The same script runs in a process pinned to one CPU and in one free to use every CPU: it writes the damage tests'
videos and a LeRobot dataset (tests/video.py: one-thread encoders, bit-exact muxing), flips seeded bytes in the
videos and records what robofm's decoder reports, and converts the dataset, recording each episode's content hash
(which also chooses its train/val split). Both runs must agree byte for byte and word for word.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import hashlib, json, os, shutil, sys
from pathlib import Path

if sys.argv[2] == "pinned":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before any library starts a thread
from robofm.data.convert import main
from robofm.data.store import EpisodeStore
from tests.data.test_video_damage import CLEAN, SEEDS, decode_error, flip_bytes, has_encoder, write_textured
from tests.lerobot_fixture import make_lerobot_dataset

out, report = Path(sys.argv[1]), {"cpus": len(os.sched_getaffinity(0))}
for codec, ext in CLEAN:
    if not has_encoder(codec):
        continue
    clean = write_textured(out / f"clean-{codec}.{ext}", codec)
    report[f"{codec}.{ext}"] = hashlib.sha256(clean.read_bytes()).hexdigest()
    for seed in SEEDS[:5]:
        damaged = out / f"flip{seed}-{codec}.{ext}"
        shutil.copy(clean, damaged)
        report[f"{codec}.{ext} flip {seed}"] = decode_error(flip_bytes(damaged, seed))
ds = make_lerobot_dataset(out / "ds", episodes=3, length=12, cameras=("front", "wrist"))
for video in sorted((ds / "videos").rglob("*.mp4")):
    report[str(video.relative_to(ds))] = hashlib.sha256(video.read_bytes()).hexdigest()
assert main(["lerobot", str(ds), "--out", str(out / "store"), "--keep", "blank", "--workers", "1"]) == 0
report["episodes"] = {e.source_index: [e.content_hash, e.split] for e in EpisodeStore(out / "store").episodes}
print(json.dumps(report))
"""


def run(folder: Path, mode: str) -> dict:
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), mode], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_videos_damage_reports_and_content_hashes_do_not_depend_on_the_core_count(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs or more to compare against 1")
    pinned, free = run(tmp_path / "pinned", "pinned"), run(tmp_path / "free", "free")
    assert pinned.pop("cpus") == 1 and free.pop("cpus") >= 2
    assert len(pinned["episodes"]) == 3 and any(k.endswith("flip 0") and v for k, v in pinned.items())
    differ = {k: (pinned.get(k), free.get(k)) for k in pinned.keys() | free.keys() if pinned.get(k) != free.get(k)}
    assert not differ, differ
