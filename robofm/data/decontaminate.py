"""Held-out data out of training data: exact and near duplicates of held-out episodes, and training tasks whose
text overlaps a held-out task's (word n-grams, as benchmark decontamination does for text).

`decontaminate` reports every training episode it would remove and why, and writes a filtered view of each
training store (robofm.data.store.write_view) that training accepts wherever it accepts a store. It never
deletes or rewrites a shard.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from robofm.data import quality as q
from robofm.data.store import EpisodeStore, write_view
from robofm.errors import UsageError
from robofm.version import __version__


@dataclass
class DecontaminationConfig:
    """ngram: words per n-gram; task_overlap: the share of a held-out task's n-grams that a training task may
    contain (at or above it, the training task's episodes go); quality: the near-duplicate tolerances."""

    ngram: int = 3
    task_overlap: float = 0.5
    quality: q.QualityConfig = field(default_factory=q.QualityConfig)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams; a text of fewer than n words is one gram of all its words."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def task_overlap(task: str, heldout: list[str], n: int) -> tuple[float, str | None]:
    """The largest share of a held-out task's n-grams found in `task`, and that held-out task."""
    grams = ngrams(task, n)
    best, which = 0.0, None
    for other in heldout:
        theirs = ngrams(other, n)
        share = len(grams & theirs) / len(theirs) if theirs else 0.0
        if share > best:
            best, which = share, other
    return best, which


def load_heldout(path: Path, cfg: DecontaminationConfig, like: EpisodeStore, console: Console) -> tuple[q.Seen, list[str], int]:  # fmt: skip
    """(index of the held-out episodes, their task texts, how many) from a store, or from a LeRobot dataset
    prepared as robofm-convert would for a store like `like` (its resolution and fps, so that content hashes of
    the same recording agree)."""
    seen = q.Seen(cfg.quality)
    columns = (BarColumn(), MofNCompleteColumn())
    if (path / "manifest.json").is_file():
        store = EpisodeStore(path)
        with Progress(TextColumn(f"[bold]indexing held-out {path}"), *columns, console=console) as bar:
            task = bar.add_task("episodes", total=len(store.episodes))
            tasks, n = sorted({e.task for e in store.episodes}), len(store.episodes)
            seen.add_store(store, "", lambda: bar.advance(task))
        return seen, tasks, n
    if not (path / "meta" / "info.json").is_file():
        raise UsageError(f"--heldout {path} is neither an episode store nor a LeRobot v3 dataset: convert it with "
                         "robofm-convert (any format) and pass the store")  # fmt: skip
    from robofm.data.convert import ConvertOptions, prepare
    from robofm.data.sources.lerobot import LeRobotSource

    source = LeRobotSource(str(path))
    h, w = next(iter(like.manifest["cameras"].values()))
    opts = ConvertOptions(out=path, resolution=(h, w), fps=like.fps, quality=q.QualityConfig(keep=q.REASONS))
    tasks, n = set(), 0
    refs = source.episodes()
    with Progress(TextColumn(f"[bold]reading held-out {path}"), *columns, console=console) as bar:
        task = bar.add_task("episodes", total=len(refs))
        for ref in refs:
            p = prepare(source, ref, opts)
            bar.advance(task)
            if p.episode is None:
                console.print(f"[yellow]held-out episode {ref.index} of {path} cannot be read, not checked:[/] {p.error}")
                continue
            seen.add(f"{ref.index}", p.content_hash, p.fingerprint)
            tasks.add(p.episode.task)
            n += 1
    return seen, sorted(tasks), n


def decontaminate(train: list[Path], heldout: Path, cfg: DecontaminationConfig, out: Path | None = None,
                  console: Console | None = None) -> dict:  # fmt: skip
    """Find what of `train` repeats `heldout`; with `out`, write a view per training store (out itself for one
    store, out/<name> for several) and decontamination.json beside them. Returns the report."""
    console = console or Console(stderr=True)
    stores = [EpisodeStore(p) for p in train]
    seen, heldout_tasks, n_heldout = load_heldout(Path(heldout), cfg, stores[0], console)
    report = {"heldout": str(heldout), "heldout_episodes": n_heldout, "heldout_tasks": heldout_tasks,
              "settings": {"ngram": cfg.ngram, "task_overlap": cfg.task_overlap, "signal_tol": cfg.quality.signal_tol,
                           "frame_tol": cfg.quality.frame_tol, "max_shift": cfg.quality.max_shift},
              "train": []}  # fmt: skip
    for i, store in enumerate(stores):
        removed = []
        overlap = {t: task_overlap(t, heldout_tasks, cfg.ngram) for t in sorted({e.task for e in store.episodes})}
        with Progress(TextColumn(f"[bold]checking {store.root}"), BarColumn(), MofNCompleteColumn(),
                      console=console) as bar:  # fmt: skip
            task = bar.add_task("episodes", total=len(store.episodes))
            for e in store.episodes:
                bar.advance(task)
                item = {"episode_id": e.id, "task": e.task, "source": e.source, "source_index": e.source_index}
                fp = q.fingerprint(store.read_episode(e.id), cfg.quality.num_perm)
                match = seen.match(e.content_hash, fp)
                share, which = overlap[e.task]
                if match is not None:  # the more specific finding first: this very episode is held out
                    reason, detail = match
                    removed.append({**item, "reason": reason, "of": detail["duplicate_of"],
                                    **({"value": detail["value"]} if "value" in detail else {})})  # fmt: skip
                elif share >= cfg.task_overlap:
                    removed.append({**item, "reason": "task_overlap", "of": which, "value": {"share": share}})
        entry = {"store": str(store.root), "episodes": len(store.episodes), "removed": removed}
        if out is not None:
            view = Path(out) if len(stores) == 1 else Path(out) / f"{i}-{store.root.name}"
            gone = {r["episode_id"] for r in removed}
            verdicts = [{"source": str(store.root), "source_index": r["episode_id"], "status": "dropped", **r}
                        for r in removed]  # fmt: skip
            write_view(store, view, {e.id for e in store.episodes} - gone, verdicts, {
                "converter": "robofm-data decontaminate", "heldout": str(heldout), "robofm_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip
            entry["view"] = str(view)
        report["train"].append(entry)
        store.close()
    if out is not None:
        (Path(out) / "decontamination.json").write_text(json.dumps(report, indent=1))
    return report
