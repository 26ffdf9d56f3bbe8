"""A seeded fuzz campaign through robofm-convert: hostile input fails only its own episode (tests/data/fuzzing.py).

benchmarks/fuzz.py runs the same harness at 1,000+ cases and writes the counts to RESULTS.md.
"""

from __future__ import annotations

from collections import Counter

import av
import pytest

from tests.data import fuzzing

CASES = 208  # 26 per source: every mutation of every source at least once (video has the most, 18)


@pytest.fixture(autouse=True)
def quiet_ffmpeg():
    level = av.logging.get_level()
    av.logging.set_level(None)  # the damaged videos make FFmpeg log; its lines are not the test's output
    yield
    av.logging.set_level(level)


def test_hostile_inputs_crash_hang_and_lose_nothing(tmp_path):
    results = fuzzing.campaign(CASES, tmp_path, seed=0, time_limit=60)
    assert {(r.source, r.kind) for r in results} == {(s, k) for s in fuzzing.SOURCES for k in fuzzing.mutations(s)}
    bad = [f"{r.source} {r.kind} seed {r.seed} ({r.what}): {r.violations} {r.detail}" for r in results if r.violations]
    assert not bad, "\n".join(bad)
    missed = [f"{r.source} {r.kind} seed {r.seed} ({r.what}): {r.outcome}" for r in results
              if r.kind in fuzzing.ALWAYS_VISIBLE[fuzzing.family(r.source)] and r.outcome.startswith("kept")]  # fmt: skip
    assert not missed, "\n".join(missed)
    outcomes = Counter(r.outcome for r in results)
    assert outcomes["failed"] + outcomes["dropped"] > CASES // 2, outcomes  # the harness does damage
