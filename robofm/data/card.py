"""The dataset card and the episode inspector behind `robofm-data report` and `robofm-data inspect`.

The card is a Markdown file (README.md) with PNG plots beside it, linked relatively, so the folder can be copied
or published as it is. It reads the manifest, stats.json and quality.json, and the state and actions of every
episode in one streaming pass (frames are never read); per-dimension histograms use fixed bins between the
stats.json minimum and maximum, so memory does not grow with the store.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")  # files only, never a window: cards are written on headless machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from robofm.data.dataset import EpisodeWindowDataset  # noqa: E402
from robofm.data.store import EpisodeInfo, EpisodeStore  # noqa: E402
from robofm.errors import UsageError  # noqa: E402
from robofm.tokenization.build import EpochTokens, TokenizerConfig, build_sequence_builder, epoch_tokens  # noqa: E402
from robofm.tokenization.sequence import SequenceConfig  # noqa: E402
from robofm.version import __version__  # noqa: E402

CARD = "README.md"
HIST_BINS = 40  # per dimension of state and action
PANEL_COLUMNS = 4  # histogram panels per row
QUALITY_EXAMPLES = 20  # dropped or failed verdicts listed on the card
DETAIL_CHARS = 200  # a longer failure message is cut on the card (quality.json keeps it whole)
PROGRESS_MIN_EPISODES = 50  # smaller stores are read without a progress bar


@dataclass
class DimHistograms:
    """Histograms of one embodiment's state or action, one per dimension: counts [D, HIST_BINS] on edges
    [D, HIST_BINS + 1]. Values outside the edges (stats.json older than the data) count in the outer bins."""

    names: list[str]
    edges: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_stats(cls, stats: dict, names: list[str] | None) -> DimHistograms | None:
        """From one stats.json entry ({min, max, ...} per dimension); None for an empty one (no such data)."""
        if not stats.get("min"):
            return None
        lo, hi = np.asarray(stats["min"], np.float64), np.asarray(stats["max"], np.float64)
        flat = hi <= lo  # a constant dimension: a bin of width 1 around its value
        lo, hi = np.where(flat, lo - 0.5, lo), np.where(flat, hi + 0.5, hi)
        edges = np.linspace(lo, hi, HIST_BINS + 1, axis=1)  # (D, HIST_BINS + 1)
        return cls(list(names or []), edges, np.zeros((len(lo), HIST_BINS), np.int64))

    def add(self, x: np.ndarray) -> None:
        """Count the rows of x [N, D]."""
        for d, edges in enumerate(self.edges):
            self.counts[d] += np.histogram(np.clip(x[:, d], edges[0], edges[-1]), bins=edges)[0]


def count_tokens(store_root: str | Path, window_len: int, stride: int, patch_size: int) -> EpochTokens:
    """Windows and tokens per epoch of the store's train split with pixel patches and binned actions (the defaults
    of robofm-plan). UsageError when the train split has no episode long enough or the patch size does not divide
    the frames."""
    ds = EpisodeWindowDataset(store_root, window_len, stride, split="train")
    builder = build_sequence_builder(ds, SequenceConfig(window_len=window_len, stride=stride),
                                     TokenizerConfig(patch_size=patch_size))  # fmt: skip
    return epoch_tokens(ds, builder)


def dimension_names(embodiment: dict, kind: str) -> list[str]:
    """The manifest's names of an embodiment's state or action dimensions, or kind[d] where it has none."""
    dim, names = embodiment[f"{kind}_dim"] or 0, embodiment.get(f"{kind}_names") or []
    return list(names) if len(names) == dim else [f"{kind}[{d}]" for d in range(dim)]


def write_card(store_root: str | Path, out_dir: str | Path, *, window_len: int = 4, stride: int = 2,
               patch_size: int = 16) -> Path:  # fmt: skip
    """Write the dataset card of the store at `store_root` to out_dir/README.md, with its PNGs beside it, and return
    the Markdown's path. Tokens per epoch are those of the train split in windows of `window_len` steps at `stride`
    with `patch_size` pixel patches; where they cannot be counted the card says why."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = EpisodeStore(store_root)
    try:
        hists = histograms(store)
    finally:
        store.close()
    try:
        tokens: EpochTokens | str = count_tokens(store_root, window_len, stride, patch_size)
    except UsageError as e:
        tokens = str(e)
    lines = _overview(store) + _tasks(store) + _embodiments(store)
    lines += _lengths(store, out) + _distributions(store, hists, out)
    lines += _quality(store.quality) + _tokens(tokens, window_len, stride, patch_size)
    path = out / CARD
    path.write_text("\n".join(lines) + "\n")
    return path


def histograms(store: EpisodeStore) -> dict[tuple[str, str], DimHistograms]:
    """Per-dimension histograms per (embodiment, "state" | "action") of every frame of the store, from one pass over
    its episodes with one shard open at a time (no key for an embodiment without actions)."""
    hists = {}
    for emb, dims in store.manifest["embodiments"].items():
        for kind in ("state", "action"):
            h = DimHistograms.from_stats(store.stats.get(emb, {}).get(kind, {}), dimension_names(dims, kind))
            if h is not None:
                hists[emb, kind] = h
    by_shard: dict[str, list[EpisodeInfo]] = {}
    for e in store.episodes:
        by_shard.setdefault(e.shard, []).append(e)
    columns = [TextColumn("[bold]reading episodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    quiet = len(store.episodes) < PROGRESS_MIN_EPISODES
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=quiet) as bar:
        task = bar.add_task("episodes", total=len(store.episodes))
        for shard, episodes in by_shard.items():
            with h5py.File(store.shard_path(shard), "r") as f:
                for e in episodes:
                    for kind in ("state", "action"):
                        if kind in f[e.id] and (e.embodiment, kind) in hists:
                            hists[e.embodiment, kind].add(f[e.id][kind][:])
                    bar.advance(task)
    return hists


def _cell(value) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows] + [""]


def _overview(store: EpisodeStore) -> list[str]:
    s = store.summary()
    cameras = ", ".join(f"{c} ({h}x{w})" for c, (h, w) in s["cameras"].items())
    hours = f"{s['hours']:,.2f} ({s['hours'] * 60:,.1f} min)"
    rows = [["episodes", f"{s['episodes']:,}"], ["frames", f"{s['frames']:,}"], ["hours", hours],
            ["fps", f"{s['fps']:g}"], ["cameras (height x width)", cameras]]  # fmt: skip
    if store.latents:
        rows.append(["latents", f"{store.latents['shape']} per frame (VAE {store.latents['vae_path']})"])
    lines = [f"# Dataset card: {store.root.name}", "",
             f"Store `{store.root}` (format {store.manifest['format_version']}, written by robofm "
             f"{store.manifest.get('robofm_version', '?')}; card by robofm {__version__}).", "",
             "## Overview", ""]  # fmt: skip
    lines += _table(["", ""], rows)
    frames = Counter()
    for e in store.episodes:
        frames[e.split] += e.length
    split_rows = [[split, f"{n:,}", f"{frames[split]:,}"] for split, n in s["splits"].items()]
    return lines + ["## Splits", ""] + _table(["split", "episodes", "frames"], split_rows)


def _tasks(store: EpisodeStore) -> list[str]:
    counts = Counter(e.task for e in store.episodes)
    frames = Counter()
    for e in store.episodes:
        frames[e.task] += e.length
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # most common first
    rows = [[task, f"{n:,}", f"{frames[task]:,}"] for task, n in ranked]
    return [f"## Tasks ({len(counts)})", ""] + _table(["task", "episodes", "frames"], rows)


def _embodiments(store: EpisodeStore) -> list[str]:
    counts = Counter(e.embodiment for e in store.episodes)
    rows = []
    for emb, dims in store.manifest["embodiments"].items():
        names = [", ".join(dimension_names(dims, kind)) or "-" for kind in ("state", "action")]
        rows.append([emb, f"{counts[emb]:,}", dims["state_dim"], dims["action_dim"] or "none", *names])
    header = ["embodiment", "episodes", "state dim", "action dim", "state names", "action names"]
    return ["## Embodiments", ""] + _table(header, rows)


def _lengths(store: EpisodeStore, out: Path) -> list[str]:
    lengths = [e.length for e in store.episodes]
    lines = ["## Episode lengths", ""]
    if not lengths:
        return lines + ["The store holds no episodes.", ""]
    fps = store.fps
    rows = [[name, f"{v:,.0f}", f"{v / fps:.1f}"] for name, v in
            (("min", min(lengths)), ("median", statistics.median(lengths)), ("max", max(lengths)))]  # fmt: skip
    png = _plot_lengths(out / "episode_lengths.png", lengths)
    return lines + _table(["", "frames", "seconds"], rows) + [f"![episode lengths]({png.name})", ""]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "unnamed"


def _distributions(store: EpisodeStore, hists: dict[tuple[str, str], DimHistograms], out: Path) -> list[str]:
    lines = ["## State and action distributions", "",
             f"Per dimension, over every frame of every split ({HIST_BINS} bins between the stats.json minimum and "
             "maximum).", ""]  # fmt: skip
    for i, emb in enumerate(store.manifest["embodiments"]):
        lines += [f"### {emb}", ""]
        for kind in ("state", "action"):
            h = hists.get((emb, kind))
            if h is None:
                lines += [f"No {kind} data.", ""]
                continue
            png = _plot_dim_histograms(out / f"{kind}_{i:02d}_{_slug(emb)}.png", h, f"{emb}: {kind}")
            lines += [f"![{emb} {kind}]({png.name})", ""]
    return lines


def _detail(verdict: dict) -> str:
    if verdict.get("message"):
        detail = str(verdict["message"])
    elif verdict.get("duplicate_of"):
        detail = f"duplicate of {verdict['duplicate_of']}"
    elif isinstance(verdict.get("value"), dict):
        detail = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in verdict["value"].items())
    else:
        detail = json.dumps(verdict.get("value", ""))
    return detail if len(detail) <= DETAIL_CHARS else detail[: DETAIL_CHARS - 3] + "..."


def _quality(quality: list[dict]) -> list[str]:
    lines = ["## Quality verdicts", ""]
    if not quality:
        return lines + ["The store has no quality.json verdicts.", ""]
    status = Counter(q["status"] for q in quality)
    dropped = Counter(q.get("reason", "unknown") for q in quality if q["status"] == "dropped")
    rows = [["kept", status["kept"]]] + [[f"dropped: {r}", n] for r, n in sorted(dropped.items())]
    rows.append(["failed", status["failed"]])
    rows += [[s, n] for s, n in status.items() if s not in ("kept", "dropped", "failed")]
    lines += [f"quality.json holds a verdict on each of {len(quality):,} source episodes.", ""]
    lines += _table(["verdict", "source episodes"], rows)
    rejected = [q for q in quality if q["status"] != "kept"]
    if rejected:
        groups: dict[tuple, list[dict]] = {}
        for q in rejected:
            groups.setdefault((q["status"], q.get("reason")), []).append(q)
        # taken from each (status, reason) in turn, so that rare failures show beside thousands of idle drops
        shown = [q for turn in zip_longest(*groups.values()) for q in turn if q is not None][:QUALITY_EXAMPLES]
        lines += [f"Dropped or failed ({len(shown)} of {len(rejected)} shown; quality.json has them all):", ""]
        rows = [[q["status"], q.get("reason", ""), q["source"], q["source_index"], _detail(q)] for q in shown]
        lines += _table(["status", "reason", "source", "index", "detail"], rows)
    return lines


def _tokens(tokens: EpochTokens | str, window_len: int, stride: int, patch_size: int) -> list[str]:
    settings = (f"windows of {window_len} steps at stride {stride} ({window_len * stride + 1} frames), {patch_size}x"
                f"{patch_size} pixel patches, binned actions")  # fmt: skip
    lines = ["## Tokens per epoch (train split)", "", f"Settings: {settings}.", ""]
    if isinstance(tokens, str):
        return lines + [f"Not counted: {tokens}", ""]
    rows = [["windows", f"{tokens.windows:,}"], ["tokens per sample", f"{tokens.tokens_per_sample:,}"],
            ["tokens per epoch", f"{tokens.tokens:,} ({tokens.tokens / 1e6:,.2f}M)"],
            ["train episodes too short for a window", f"{tokens.too_short:,}"]]  # fmt: skip
    return lines + _table(["", ""], rows)


def _plot_lengths(path: Path, lengths: list[int]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(lengths, bins=min(HIST_BINS, len(set(lengths))), color="tab:blue")
    ax.set_xlabel("frames per episode")
    ax.set_ylabel("episodes")
    ax.set_title(f"episode lengths ({len(lengths):,} episodes)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_dim_histograms(path: Path, h: DimHistograms, title: str) -> Path:
    """One panel per dimension, titled with its name, PANEL_COLUMNS to a row."""
    dims = len(h.counts)
    cols = min(PANEL_COLUMNS, dims)
    rows = -(-dims // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2 * rows + 0.6), squeeze=False)
    for d, ax in enumerate(axes.flat):
        if d >= dims:
            ax.set_axis_off()
            continue
        edges = h.edges[d]
        ax.bar(edges[:-1], h.counts[d], width=np.diff(edges), align="edge", color="tab:blue")
        ax.set_title(h.names[d] if d < len(h.names) else f"[{d}]", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def inspect_episode(store_root: str | Path, episode_id: str, out_dir: str | Path, *, frames: int = 8) -> list[Path]:
    """Write out_dir/<id>_frames.png (`frames` evenly spaced frames of each camera, a row per camera, each labelled
    with its frame index) and out_dir/<id>_actions.png (each action and state dimension over the episode; state
    only for an action-free episode) and return [frames PNG, actions PNG]. UsageError for an unknown episode id
    (naming the ids the store has) or frames < 1."""
    if frames < 1:
        raise UsageError(f"frames must be >= 1, got {frames}")
    store = EpisodeStore(store_root, validate=False)  # one episode is read: validating every shard costs more
    info = store.info(episode_id)
    dims = store.manifest["embodiments"][info.embodiment]
    index = np.unique(np.linspace(0, info.length - 1, min(frames, info.length)).round().astype(int))
    try:
        g = store.group(episode_id)
        strip = {c: np.stack([g["frames"][c][t] for t in index]) for c in store.cameras if c in g["frames"]}
        state, action = g["state"][:], g["action"][:] if "action" in g else None
    finally:
        store.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{info.id}: {info.task} ({info.embodiment}, {info.length} frames at {store.fps:g} fps)"
    signals = {"action": action, "state": state} if action is not None else {"state": state}
    names = {kind: dimension_names(dims, kind) for kind in signals}
    return [_plot_frame_strip(out / f"{info.id}_frames.png", strip, index, title),
            _plot_signals(out / f"{info.id}_actions.png", signals, names, title)]  # fmt: skip


def _plot_frame_strip(path: Path, strip: dict[str, np.ndarray], index: np.ndarray, title: str) -> Path:
    """A row per camera of its frames [n, h, w, 3] at episode frames `index` [n]."""
    h, w = next(iter(strip.values())).shape[1:3]
    panel = 1.8  # inches wide
    fig, axes = plt.subplots(len(strip), len(index), figsize=(panel * len(index) + 0.4,
                             len(strip) * (panel * h / w + 0.3) + 0.5), squeeze=False)  # fmt: skip
    for row, (cam, images) in zip(axes, strip.items(), strict=True):
        for ax, image, t in zip(row, images, index, strict=True):
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t={t}", fontsize=8)
        row[0].set_ylabel(cam, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_signals(path: Path, signals: dict[str, np.ndarray], names: dict[str, list[str]], title: str) -> Path:
    """A column per kind (action, state), a panel per dimension [T, D] over episode frames."""
    rows = max(1, *(x.shape[1] for x in signals.values()))
    fig, axes = plt.subplots(rows, len(signals), figsize=(5 * len(signals), 1.3 * rows + 0.9), squeeze=False)
    for col, (kind, x) in enumerate(signals.items()):
        frames = np.arange(len(x))
        for d in range(rows):
            ax = axes[d, col]
            if d >= x.shape[1]:
                ax.set_axis_off()
                continue
            ax.plot(frames, x[:, d], color="tab:orange" if kind == "action" else "tab:blue", lw=1.2)
            ax.set_title(names[kind][d], fontsize=8)
            ax.tick_params(labelsize=7)
        axes[max(x.shape[1], 1) - 1, col].set_xlabel("episode frame")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
