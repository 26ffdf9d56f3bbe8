"""Near-duplicate detection cost: 1,000 against 10,000 synthetic episodes, side by side in one run.

    .venv/bin/python benchmarks/dedup.py [--small 1000] [--large 10000] [--scenes 100] [--write-results]

Each run fingerprints every episode and checks it against the index of those before it (what robofm-convert
does), with 2% planted near duplicates (sensor noise and a 2-frame shift). Episodes are spread over --scenes
scenes (a background texture each, like the tasks or sites of a dataset that grows by adding them); --scenes 1
is the adversarial case of one scene, one object and random paths in a 32x32 image. The target: the large run
takes under 15x the small one (10x the episodes: close to linear, where all-pairs comparison would be 100x).
Recall on the planted duplicates and the number of candidate pairs verified are reported beside the times.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import cpu_name, load_now, publish, robofm_revision, verdict

from robofm.data.episode import Episode
from robofm.data.quality import QualityConfig, Seen, fingerprint

SECTION = "## Near-duplicate detection"
TARGET_RATIO = 15.0
LENGTH, SIZE = 40, 32


def synthetic(seed: int, scenes: int = 1) -> Episode:
    """A textured scene (one of `scenes`) with a block moving along a random smooth path: state = its position
    and a per-episode offset, action = velocity."""
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH)
    knots = rng.uniform(2, SIZE - 8, (4, 2))
    pos = np.stack([np.interp(t, np.linspace(0, LENGTH - 1, 4), knots[:, d]) for d in range(2)], axis=1)
    background = np.random.default_rng(10_000 + seed % scenes).integers(30, 220, (SIZE, SIZE, 3), dtype=np.uint8)
    frames = np.repeat(background[None], LENGTH, axis=0)
    for i, (y, x) in enumerate(pos.round().astype(int)):
        frames[i, y : y + 6, x : x + 6] = (250, 200, 20)
    state = np.concatenate([pos, rng.normal(0, 1, (1, 3)).repeat(LENGTH, 0)], axis=1).astype(np.float32)
    return Episode(frames={"cam": frames}, state=state, action=np.gradient(pos, axis=0).astype(np.float32),
                   timestamp=t / 10.0, task="move", source="synthetic", source_index=str(seed))  # fmt: skip


def planted(ep: Episode, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    frames = np.clip(ep.frames["cam"][2:].astype(np.int16) + rng.integers(-3, 4, (LENGTH - 2, SIZE, SIZE, 3)), 0, 255)
    return Episode(frames={"cam": frames.astype(np.uint8)}, state=ep.state[2:] + rng.normal(0, 0.01, (LENGTH - 2, 5)),
                   action=ep.action[2:], timestamp=ep.timestamp[2:], task=ep.task, source="planted",
                   source_index=ep.source_index)  # fmt: skip


def run(n: int, scenes: int) -> dict:
    """Detection over n episodes of which 2% are planted near duplicates of earlier ones."""
    cfg = QualityConfig()
    seen = Seen(cfg)
    n_planted = n // 50
    originals = n - n_planted
    found, start = 0, time.perf_counter()
    for i in range(n):
        ep = synthetic(i, scenes) if i < originals else planted(synthetic(i - originals, scenes), i)
        fp = fingerprint(ep, cfg.num_perm)
        match = seen.match(str(i), fp)
        if match is None:
            seen.add(str(i), str(i), fp)
        elif i >= originals:
            found += 1
    seconds = time.perf_counter() - start
    return {"episodes": n, "seconds": seconds, "planted": n_planted, "found": found,
            "candidates": seen.index.candidates_checked, "dropped": n - len(seen.index)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--large", type=int, default=10000)
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()
    small, large = run(args.small, args.scenes), run(args.large, args.scenes)
    ratio = large["seconds"] / small["seconds"]
    rows = [f"| {r['episodes']:,} | {r['seconds']:.1f} | {r['candidates']:,} | {r['found']} / {r['planted']} | "
            f"{r['dropped'] - r['found']} |" for r in (small, large)]  # fmt: skip
    text = "\n".join([
        SECTION, "",
        f"`.venv/bin/python benchmarks/dedup.py --small {args.small} --large {args.large} --scenes {args.scenes} "
        f"--write-results` (robofm {robofm_revision()}, {cpu_name()}, load {load_now()}). Episodes of {LENGTH} "
        f"frames, one {SIZE}x{SIZE} camera, state 5, action 2, over {args.scenes} scene(s): a block on a random "
        "path; 2% planted near duplicates "
        "(+-3 grey levels of noise, state noise, 2 frames shifted). Fingerprint, LSH query and verification of "
        "every episode against those before it, as robofm-convert does.", "",
        "| episodes | seconds | candidate pairs verified | planted found | clean episodes dropped |",
        "| ---: | ---: | ---: | ---: | ---: |", *rows, "",
        f"Time ratio {large['episodes'] // small['episodes']}x the episodes: **{ratio:.1f}x** (target under "
        f"{TARGET_RATIO:g}x, all pairs would be 100x): {verdict(ratio < TARGET_RATIO)}.",
    ])  # fmt: skip
    publish(SECTION, text, args.write_results)


if __name__ == "__main__":
    main()
