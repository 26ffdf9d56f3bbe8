"""Fuzz campaign: seeded hostile inputs through robofm-convert, counted by source and outcome.

The harness is tests/data/fuzzing.py (the CI test runs 208 of its cases): each case damages a copy of a small
undamaged source with one seeded mutation, converts it in this process under a time limit, and compares every
episode with the undamaged conversion. Outcomes of the damaged episodes: failed (a typed error in quality.json),
dropped (a quality filter), kept-same (the mutation changed nothing the store holds), kept-altered (damage no check
saw), refused (a usage error: the source is unreadable as a whole). Violations, each a bug: crash, hang, lost (an
undamaged episode not converted as without the damage), unjudged (an episode without a verdict).

    .venv/bin/python benchmarks/fuzz.py --cases 1200 --seed 1 --write-results
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import av
from common import REPO, cpu_name, load_now, publish, robofm_revision

sys.path.insert(0, str(REPO))
from tests.data import fuzzing  # noqa: E402 -- the harness the test suite runs

SECTION = "## Fuzz campaign"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1200)
    p.add_argument("--seed", type=int, default=1, help="campaign seed (the CI test uses 0)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per case before it counts as a hang")
    p.add_argument("--sources", default=",".join(fuzzing.SOURCES))
    p.add_argument("--write-results", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sources = tuple(args.sources.split(","))
    av.logging.set_level(None)  # damaged videos make FFmpeg log; the counts are the output
    start = time.perf_counter()
    done = Counter()

    def progress(r: fuzzing.Result) -> None:
        done[r.outcome] += 1
        if r.violations:
            print(f"VIOLATION {r.source} {r.kind} seed {r.seed} ({r.what}): {r.violations} {r.detail}", flush=True)
        if sum(done.values()) % 100 == 0:
            print(f"{sum(done.values())} cases, {time.perf_counter() - start:.0f} s: {dict(done)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="robofm-fuzz-") as work:
        results = fuzzing.campaign(args.cases, Path(work), seed=args.seed, sources=sources,
                                   time_limit=args.time_limit, progress=progress)  # fmt: skip
    seconds = time.perf_counter() - start
    publish(SECTION, report(results, args, seconds), args.write_results)


def report(results: list[fuzzing.Result], args: argparse.Namespace, seconds: float) -> str:
    outcomes = [*fuzzing.OUTCOMES_OK]
    by_source: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        by_source[r.source][r.outcome] += 1
        for v in r.violations:
            by_source[r.source][v] += 1
    violations = Counter(v for r in results for v in r.violations)
    cols = outcomes + list(fuzzing.VIOLATIONS)
    lines = [
        SECTION,
        "",
        "    .venv/bin/python " + " ".join(shlex.quote(a) for a in ["benchmarks/fuzz.py", *sys.argv[1:]]),
        "",
        f"robofm {robofm_revision()}, {cpu_name()}, load {load_now()}: {len(results)} cases (seed {args.seed}), "
        f"{seconds:.0f} s, {args.time_limit:g} s limit per case. Each case damages one episode of a small source "
        "(3 episodes of 24 frames, 32x32) with one seeded mutation (tests/data/fuzzing.py lists them) and converts "
        "it with `robofm-convert ... --resolution native`. Outcomes are those of the damaged episode; the last four "
        "columns are bugs.",
        "",
        "| source | cases | " + " | ".join(cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for source in sorted(by_source):
        c = by_source[source]
        n = sum(c[o] for o in outcomes) + c["crash"] + c["hang"]
        lines.append(f"| {source} | {n} | " + " | ".join(str(c[o]) for o in cols) + " |")
    total = Counter()
    for c in by_source.values():
        total.update(c)
    lines.append(f"| **all** | {len(results)} | " + " | ".join(f"**{total[o]}**" for o in cols) + " |")
    lines += ["", f"Violations: {sum(violations.values())} ({', '.join(f'{k} {v}' for k, v in violations.items()) or 'none'})."]
    altered: dict[tuple[str, str], list[fuzzing.Result]] = defaultdict(list)
    for r in results:
        if r.outcome == "kept-altered":
            altered[r.source, r.kind].append(r)
    if altered:
        lines += ["", "**Damage kept** (kept-altered, by mutation): what no check can see. The largest mean absolute "
                  "difference of one frame against the undamaged conversion, in grey levels (0: only state, action "
                  "or timestamps differ; inf: the number of frames differs).", "",
                  "| source | mutation | kept-altered of cases | largest frame change |", "|---|---|---:|---:|"]  # fmt: skip
        cases = Counter((r.source, r.kind) for r in results)
        for (source, kind), rs in sorted(altered.items()):
            lines.append(f"| {source} | {kind} | {len(rs)} of {cases[source, kind]} | "
                         f"{max(r.altered_by for r in rs):.1f} |")  # fmt: skip
    slow = max(results, key=lambda r: r.seconds)
    lines += ["", f"Slowest case: {slow.source} {slow.kind} seed {slow.seed}, {slow.seconds:.1f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
