"""What every benchmark script reports the same way: the machine, the commit, verdicts, and its RESULTS.md section."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"


def robofm_revision() -> str:
    """The commit the numbers belong to, '+changes' when robofm/ differs from it (read-only git calls)."""

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    sha = git("rev-parse", "--short", "HEAD") or "no commit"
    return sha + ("+changes" if git("status", "--porcelain", "--", "robofm") else "")


def cpu_name() -> str:
    return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), platform.processor())  # fmt: skip


def load_now() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section starting at `heading` in RESULTS.md (up to the next '## ' heading), or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by the scripts in benchmarks/.\n"
    lines = text.splitlines()
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section.rstrip("\n").splitlines() + ([""] if end < len(lines) else [])
    else:
        lines += ["", *section.rstrip("\n").splitlines()]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def publish(heading: str, section: str, write: bool) -> None:
    """Print a benchmark's RESULTS.md section and, with --write-results, put it in RESULTS.md."""
    print("\n" + section)
    if write:
        write_section(RESULTS, heading, section)
        print(f"updated {RESULTS}")
