"""`robofm-convert`: LeRobot v3, HDF5 and video+telemetry episodes into one episode store.

Exit status: 0 every episode was kept or deliberately dropped; 3 some failed and others converted;
1 none converted; 2 usage error.
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from robofm.data import quality as q
from robofm.data.episode import Episode, content_hash, resample, resize_frames
from robofm.data.sources.base import FPS, EpisodeRef, Source, number
from robofm.data.store import (
    FAILED_OVERWRITE,
    QUALITY,
    EpisodeStore,
    StoreWriter,
    split_from_hash,
    task_hash,
    write_json_atomic,
)
from robofm.errors import EpisodeError, RobofmError, StoreError, UsageError
from robofm.tokenizers.image import LatentTokenizer
from robofm.version import __version__

EXIT_OK, EXIT_NONE, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


@dataclass
class ConvertOptions:
    """Everything about a conversion except where episodes come from."""

    out: Path
    resolution: tuple[int, int] | None = (96, 96)  # None keeps the first episode's resolution
    resize_mode: str = "crop"
    fps: float | None = None
    cameras: list[str] | None = None
    workers: int = 1
    shard_size_mb: float = 1024
    compression: str = "none"
    embodiment: str | None = None
    mode: str = "create"  # create | overwrite | append
    strict: bool = False
    val_fraction: float = 0.1
    split_by: str = "hash"  # hash: per episode, from its content hash; task: whole tasks, from the task text
    quality: q.QualityConfig = field(default_factory=q.QualityConfig)
    dedup_against: list[Path] = field(default_factory=list)  # stores whose episodes this one must not repeat
    latents: Path | None = None  # a local AutoencoderKL folder: store its latents of the frames too
    license: str | None = None  # the data's license (SPDX id), recorded in the provenance; None: the source's
    argv: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    """An episode ready to write, the quality check it failed, or the reason it could not be read."""

    ref: EpisodeRef
    episode: Episode | None = None
    content_hash: str = ""
    measured: dict | None = None
    fingerprint: q.Fingerprint | None = None
    verdict: q.Verdict | None = None
    error: str = ""


def prepare(source: Source, ref: EpisodeRef, opts: ConvertOptions) -> Prepared:
    """Load, check, resample and resize one episode. Runs in a worker process."""
    try:
        ep = source.load(ref, opts.resolution, opts.resize_mode)
        if opts.embodiment:
            ep.embodiment = opts.embodiment
        verdict = q.check_source(ep, opts.quality)
        if verdict is not None:
            return Prepared(ref, verdict=verdict)
        ep.validate()
        if opts.cameras:
            missing = [c for c in opts.cameras if c not in ep.frames]
            if missing:
                raise ep.fail(f"camera(s) {missing} not found; the episode has {sorted(ep.frames)}")
            ep.frames = {c: ep.frames[c] for c in opts.cameras}
        if opts.fps:  # the store's rate: the source's own unless --fps asks for another
            ep = resample(ep, opts.fps)
        if opts.resolution:
            ep.frames = {c: resize_frames(fr, opts.resolution, opts.resize_mode) for c, fr in ep.frames.items()}
        thumbs = {c: q.thumbnails(fr) for c, fr in ep.frames.items()}  # one pass, for the checks and the fingerprint
        verdict, measured = q.check_content(ep, opts.quality, thumbs)
        if verdict is not None:
            return Prepared(ref, verdict=verdict)
        if opts.latents:
            ep.latents = {c: encode_latents(fr, opts.latents) for c, fr in ep.frames.items()}
        return Prepared(ref, ep, content_hash(ep), measured, q.fingerprint(ep, opts.quality.num_perm, thumbs))
    except EpisodeError as e:
        return Prepared(ref, error=str(e))
    except Exception as e:  # an unexpected decoder failure is still this episode's failure, not the run's
        return Prepared(ref, error=str(EpisodeError(f"{type(e).__name__}: {e}", file=ref.source, episode=ref.index)))


_LATENT_TOKENIZERS: dict[str, LatentTokenizer] = {}  # per process: the VAE is loaded once, not per episode
LATENT_CHUNK = 64  # frames encoded at a time: bounds the VAE's activation memory


def latent_tokenizer(vae_path: str | Path) -> LatentTokenizer:
    """The LatentTokenizer of a VAE folder, loaded once per process (UsageError if it cannot be loaded)."""
    key = str(Path(vae_path).resolve())
    if key not in _LATENT_TOKENIZERS:
        _LATENT_TOKENIZERS[key] = LatentTokenizer(key)
    return _LATENT_TOKENIZERS[key]


def encode_latents(frames: np.ndarray, vae_path: str | Path) -> np.ndarray:
    """uint8 frames [T, H, W, 3] -> float16 latents [T, C, h, w] (scaled by the VAE's scaling_factor)."""
    tok = latent_tokenizer(vae_path)
    chunks = [tok.encode_frames(torch.from_numpy(frames[i : i + LATENT_CHUNK])).numpy()
              for i in range(0, len(frames), LATENT_CHUNK)]  # fmt: skip
    return np.concatenate(chunks)


def _latents_record(vae_path: str | Path, shape: tuple[int, ...]) -> dict:
    """The manifest's "latents" entry: which VAE made them, their shape per frame and their scale."""
    tok = latent_tokenizer(vae_path)
    return {"vae_path": str(tok.vae_path), "shape": list(shape), "scaling_factor": tok.scaling_factor}


def _worker_init() -> None:
    torch.set_num_threads(1)  # parallelism comes from the processes


def _prepared_in_order(source: Source, refs: list[EpisodeRef], opts: ConvertOptions) -> Iterator[Prepared]:
    """Prepared episodes in source order. With workers > 1 a fork pool decodes ahead, at most 2 episodes per
    worker, so memory stays bounded. Every worker is forked when the pool starts, before the writer opens
    any HDF5 file, so no child inherits an open shard."""
    if opts.workers <= 1:
        yield from _prepared_ahead(source, refs, opts)
        return
    with get_context("fork").Pool(opts.workers, initializer=_worker_init) as pool:
        pending: deque = deque()
        for ref in refs:
            pending.append(pool.apply_async(prepare, (source, ref, opts)))
            if len(pending) >= 2 * opts.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _prepared_ahead(source: Source, refs: list[EpisodeRef], opts: ConvertOptions) -> Iterator[Prepared]:
    """Prepared episodes in source order from one daemon thread, which decodes and checks the next episode while
    the caller writes the last (decoders and numpy release the GIL): at most one waits. A daemon, so that an
    interrupt or a stop (--strict) never waits for the episode in progress."""
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for ref in refs:
                if not hand_over(prepare(source, ref, opts)):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the caller, which raises it
            hand_over(e)
            return
        hand_over(None)

    threading.Thread(target=work, name="robofm-prepare", daemon=True).start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@dataclass
class Summary:
    kept: int = 0
    skipped_existing: int = 0
    failed: int = 0
    frames: int = 0
    dropped: Counter = field(default_factory=Counter)
    bytes_written: int = 0
    seconds: float = 0.0
    quality_path: Path | None = None  # where the verdicts are when not in the store's quality.json

    @property
    def exit_code(self) -> int:
        if self.failed == 0:
            return EXIT_OK
        return EXIT_PARTIAL if self.kept or self.skipped_existing else EXIT_NONE


def convert(source: Source, opts: ConvertOptions, console: Console | None = None) -> Summary:
    """Convert every episode of `source` into the store at opts.out and return what happened."""
    console = console or Console(stderr=True)
    refs = source.episodes()
    if not refs:
        raise UsageError(f"{source}: no episodes found")
    opts.fps = opts.fps or source.fps
    if opts.latents:
        latent_tokenizer(opts.latents)  # a bad VAE folder is a usage error now; forked workers inherit the VAE
    writer = _open_existing(opts) if opts.mode == "append" and (opts.out / "manifest.json").exists() else None
    preexisting = set(writer.hash_to_id) if writer else set()
    seen = _seen(opts, console)
    summary, start, early = Summary(), time.perf_counter(), []
    columns = [TextColumn("[bold]converting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn()]  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("episodes", total=len(refs), rate="")
        for p in _prepared_in_order(source, refs, opts):
            if p.episode is not None and writer is None:
                writer = _new_writer(p.episode, opts, source)
            entry = _admit(p, writer, preexisting, seen, opts, summary, console)
            if entry is not None:
                early.append(entry)
            if writer is not None:
                for e in early:
                    writer.record(e)
                early = []
            elapsed = time.perf_counter() - start
            n_done = bar.tasks[0].completed + 1
            bar.update(task, advance=1, rate=f"{n_done / elapsed:.1f} ep/s {summary.frames / elapsed:.0f} frames/s")
            if opts.strict and p.episode is None:
                console.print("[red]--strict: stopped at the first failure[/red]")
                break
    if writer is not None:
        writer.close()
        if opts.mode == "overwrite" and not summary.kept:
            summary.quality_path = opts.out / FAILED_OVERWRITE
        summary.bytes_written = sum(f.stat().st_size for f in (opts.out / "shards").glob("*.h5"))
    else:  # nothing converted: the verdicts are still written so that the failures can be read
        opts.out.mkdir(parents=True, exist_ok=True)
        if (opts.out / "manifest.json").exists():  # a failed --overwrite leaves the old store as it was
            summary.quality_path = opts.out / FAILED_OVERWRITE
        write_json_atomic(summary.quality_path or opts.out / QUALITY, early)
    summary.seconds = time.perf_counter() - start
    return summary


def _seen(opts: ConvertOptions, console: Console) -> q.Seen:
    """What new episodes must not repeat: the store being appended to, and every --dedup-against store."""
    seen = q.Seen(opts.quality)
    stores = [(opts.out, "")] if opts.mode == "append" and (opts.out / "manifest.json").exists() else []
    stores += [(Path(root), f"{root}:") for root in opts.dedup_against]
    for root, prefix in stores:
        if not (Path(root) / "manifest.json").is_file():
            raise UsageError(f"--dedup-against {root}: not an episode store (no manifest.json)")
        store = EpisodeStore(root)
        with Progress(TextColumn(f"[bold]indexing {root}"), BarColumn(), MofNCompleteColumn(), console=console) as bar:
            task = bar.add_task("episodes", total=len(store.episodes))
            seen.add_store(store, prefix, partial(bar.advance, task))
    return seen


def _admit(p: Prepared, writer: StoreWriter | None, preexisting: set[str], seen: q.Seen, opts: ConvertOptions,
           summary: Summary, console: Console) -> dict | None:  # fmt: skip
    """Decide what happens to one prepared episode; write it if kept. Returns its quality.json entry."""
    entry = {"source": p.ref.source, "source_index": p.ref.index}
    if p.verdict is not None:
        summary.dropped[p.verdict.reason] += 1
        return {**entry, "status": "dropped", "reason": p.verdict.reason, "message": p.verdict.message,
                "value": p.verdict.value}  # fmt: skip
    ep = p.episode
    if ep is not None and set(ep.frames) != set(writer.cameras):
        p = Prepared(p.ref, error=str(ep.fail(f"cameras {sorted(ep.frames)} differ from the store's "
                                              f"{sorted(writer.cameras)}; choose them with --cameras")))  # fmt: skip
    if p.episode is None:
        return _failed(entry, p.error, summary, console)
    try:
        return _write(p, writer, preexisting, seen, opts, summary, entry)
    except Exception as e:  # noqa: BLE001 -- numpy, h5py or the stats on unforeseen input: this episode's failure
        error = e if isinstance(e, EpisodeError) else ep.fail(f"cannot be written: {type(e).__name__}: {e}")
        return _failed(entry, str(error), summary, console)


def _write(p: Prepared, writer: StoreWriter, preexisting: set[str], seen: q.Seen, opts: ConvertOptions,
           summary: Summary, entry: dict) -> dict | None:  # fmt: skip
    """Write one episode that passed every check; its quality.json entry (None: the store already has it)."""
    ep = p.episode
    if p.content_hash in preexisting:
        summary.skipped_existing += 1  # --append of an episode the store already has: its verdict stands
        return None
    match = seen.match(p.content_hash, p.fingerprint)
    if match is not None:
        reason, detail = match
        summary.dropped[reason] += 1
        return {**entry, "status": "dropped", "reason": reason, **detail}
    for cam, (h, w) in writer.cameras.items():  # --resolution native: later episodes follow the first one
        if ep.frames[cam].shape[1:3] != (h, w):
            ep.frames[cam] = resize_frames(ep.frames[cam], (h, w), opts.resize_mode)
            if ep.latents is not None:  # rare (native resolution only), so done here rather than in a worker
                ep.latents[cam] = encode_latents(ep.frames[cam], opts.latents)
    split_key = task_hash(ep.task) if opts.split_by == "task" else p.content_hash
    info = writer.add(ep, p.content_hash, ep.split or split_from_hash(split_key, opts.val_fraction))
    seen.add(info.id, p.content_hash, p.fingerprint)
    summary.kept += 1
    summary.frames += ep.length
    notes = {"notes": ep.extra} if ep.extra else {}  # e.g. frames a source trimmed, with the count
    return {**entry, "status": "kept", "episode_id": info.id, "split": info.split, "value": p.measured, **notes}


def _failed(entry: dict, error: str, summary: Summary, console: Console) -> dict:
    summary.failed += 1
    console.print(f"[red]failed[/red] {escape(error)}", soft_wrap=True)
    return {**entry, "status": "failed", "reason": "error", "message": error}


def _open_existing(opts: ConvertOptions) -> StoreWriter:
    store = EpisodeStore(opts.out)
    cams = {c: tuple(hw) for c, hw in store.manifest["cameras"].items()}
    if opts.resolution:
        want = {c: tuple(opts.resolution) for c in cams}
        if want != cams:
            raise UsageError(f"{opts.out} stores cameras at {cams}; convert with the same --resolution to append")
    have = (store.latents or {}).get("vae_path")
    want = opts.latents and str(latent_tokenizer(opts.latents).vae_path)
    if have != want:
        stored = f"latents of the VAE at {have}" if have else "no latents"
        asked = f"--latents {want}" if want else "no --latents"
        raise UsageError(f"{opts.out} stores {stored} but this conversion has {asked}: append with the same setting")
    return StoreWriter(opts.out, fps=opts.fps or store.fps, cameras=cams, mode="append",
                       shard_size_mb=opts.shard_size_mb, compression=opts.compression,
                       provenance=_provenance(opts), latents=store.latents)  # fmt: skip


def _new_writer(ep: Episode, opts: ConvertOptions, source: Source) -> StoreWriter:
    cams = {c: fr.shape[1:3] for c, fr in ep.frames.items()}
    latents = None
    if ep.latents is not None:
        shapes = {lat.shape[1:] for lat in ep.latents.values()}
        if len(shapes) > 1:
            raise UsageError(f"--latents needs one frame size for every camera, got {cams}: pass --resolution HxW")
        latents = _latents_record(opts.latents, shapes.pop())
    return StoreWriter(opts.out, fps=opts.fps, cameras=cams, mode=opts.mode, shard_size_mb=opts.shard_size_mb,
                       compression=opts.compression, provenance=_provenance(opts, source), latents=latents)  # fmt: skip


def _provenance(opts: ConvertOptions, source: Source | None = None) -> dict:
    return {
        "converter": "robofm-convert",
        "source": str(source) if source is not None else None,
        "arguments": opts.argv,
        "robofm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "license": opts.license or (getattr(source, "license", None) if source is not None else None),
    }


def print_summary(summary: Summary, out: Path, console: Console) -> None:
    table = Table(title=f"robofm-convert -> {out}", show_header=True)
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("episodes kept", str(summary.kept))
    if summary.skipped_existing:
        table.add_row("already in the store (skipped)", str(summary.skipped_existing))
    for reason, n in sorted(summary.dropped.items()):
        table.add_row(f"dropped: {reason}", str(n))
    table.add_row("failed", str(summary.failed))
    table.add_row("frames written", str(summary.frames))
    table.add_row("bytes on disk (shards)", f"{summary.bytes_written / 2**20:.1f} MiB")
    table.add_row("seconds", f"{summary.seconds:.1f}")
    console.print(table)
    if summary.failed or summary.dropped:
        console.print(f"Every verdict with its reason: {summary.quality_path or out / QUALITY}")
    if summary.quality_path:
        console.print(f"Nothing converted: the store at {out} is left as it was")


def print_store_summary(root: Path, console: Console) -> None:
    """The dataset summary a person reads before training on a store."""
    s = EpisodeStore(root).summary()
    table = Table(title=f"episode store {root}")
    table.add_column("")
    table.add_column("")
    table.add_row("episodes", f"{s['episodes']} ({', '.join(f'{k}: {v}' for k, v in s['splits'].items())})")
    table.add_row("frames", f"{s['frames']} ({s['hours'] * 60:.1f} min at {s['fps']:g} fps)")
    table.add_row("cameras", ", ".join(f"{c} {h}x{w}" for c, (h, w) in s["cameras"].items()))
    table.add_row("tasks", str(s["tasks"]))
    for name, emb in s["embodiments"].items():
        table.add_row(f"embodiment {name}", f"state {emb['state_dim']}, action {emb['action_dim']}")
    console.print(table)


# --------------------------------------------------------------------------- command line


def _resolution(text: str) -> tuple[int, int] | None:
    if text == "native":
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 96x96) or 'native', got {text!r}") from None
    return h, w


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the option (exit 2), not the whole usage text first."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from robofm.data.sources import SOURCE_MODULES, source_module

    parser = OneLineParser(
        prog="robofm-convert",
        description="Convert robot episodes into a robofm episode store (HDF5 shards + manifest.json, stats.json, "
        "quality.json). Exit status: 0 all episodes kept or deliberately dropped, 3 some failed, 1 none converted, "
        "2 usage error.",
    )
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{" + ",".join(SOURCE_MODULES) + "}")
    for name in SOURCE_MODULES:
        module = source_module(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        common = p.add_argument_group("store options")
        common.add_argument("--out", type=Path, required=True, help="store folder to write")
        common.add_argument("--resolution", type=_resolution, default=(96, 96), metavar="HxW",
                            help="frame size in the store (default 96x96), or 'native' to keep the source size. "
                                 "The aspect ratio is kept: frames are centre-cropped to HxW's aspect, then resized "
                                 "with antialiasing (see --resize-mode)")  # fmt: skip
        common.add_argument("--resize-mode", choices=["crop", "pad", "stretch"], default="crop",
                            help="crop: centre-crop to the target aspect (default); pad: letterbox with black, "
                                 "nothing cut; stretch: ignore the aspect ratio")  # fmt: skip
        common.add_argument("--fps", type=FPS, help="store frame rate; episodes are resampled by timestamp "
                            "(frames: nearest, state/action: linear), 1 to 1000. Default: the source's rate")  # fmt: skip
        common.add_argument("--cameras", type=lambda s: s.split(","), help="comma-separated cameras to keep")
        common.add_argument("--workers", type=number(int, 1, 256), default=1,
                            help="processes decoding episodes in parallel (1 to 256)")  # fmt: skip
        common.add_argument("--shard-size", type=number(float, 0, lo_open=True), default=1024, metavar="MB",
                            help="start a new shard after this many MB of raw frames (default 1024)")  # fmt: skip
        common.add_argument("--compression", choices=["none", "lzf", "gzip"], default="none",
                            help="frame compression in the shards: none (default, fastest to read and write), "
                                 "lzf (~20-35%% smaller on camera frames, ~5x slower to write) or gzip (smallest, "
                                 "slowest)")  # fmt: skip
        common.add_argument("--embodiment", help="embodiment name for every episode (default: the source's)")
        common.add_argument("--latents", type=Path, metavar="VAE_DIR",
                            help="also store each frame's latents from a diffusers AutoencoderKL saved in this "
                                 "local folder (save_pretrained), so training with latent tokens never runs the "
                                 "encoder; frames are stored too")  # fmt: skip
        mode = common.add_mutually_exclusive_group()
        mode.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
        mode.add_argument("--append", action="store_true",
                          help="add to an existing store, skipping episodes whose content hash it already has")  # fmt: skip
        common.add_argument("--strict", action="store_true", help="stop at the first episode that fails")
        common.add_argument("--license", metavar="SPDX", help="the data's license (e.g. mit, apache-2.0, cc-by-4.0), "
                            "recorded in the store and in the model cards of what trains on it (default: the "
                            "source's, where it declares one: a LeRobot dataset card's `license`)")  # fmt: skip
        common.add_argument("--val-fraction", type=number(float, 0, 1), default=0.1,
                            help="share of episodes in the 'val' split (0 to 1), assigned from the content "
                                 "hash")  # fmt: skip
        common.add_argument("--split-by", choices=["hash", "task"], default="hash",
                            help="hash: each episode's split from its content hash (default); task: whole tasks "
                                 "held out, from the task text. Either way adding episodes never moves one")  # fmt: skip
        filters = p.add_argument_group("quality filters (every verdict and measured value goes to quality.json)")
        filters.add_argument("--keep", type=lambda v: tuple(r for r in v.split(",") if r), default=(),
                             metavar="REASONS", help=f"comma-separated reasons not to drop for: {', '.join(q.REASONS)}")
        filters.add_argument("--quality", nargs="+", default=[], metavar="KEY=VALUE",
                             help="thresholds, e.g. min_length=20 frozen_frames=15 signal_tol=0.05; keys: "
                                  f"{', '.join(f.name for f in fields(q.QualityConfig) if f.name != 'keep')}")  # fmt: skip
        filters.add_argument("--dedup-against", type=Path, action="append", default=[], metavar="STORE",
                             help="also drop exact and near duplicates of this store's episodes (repeatable)")
    return parser


def check_out(out: Path) -> None:
    """--out is a folder this process can write in (it is made if missing): UsageError naming why not."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is an existing file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UsageError(f"--out {out} cannot be written: {e.strerror or e}") from None


def main(argv: list[str] | None = None) -> int:
    from robofm.data.sources import source_module

    argv = sys.argv[1:] if argv is None else argv
    console = Console(stderr=True)
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on a usage error
    try:
        quality = q.QualityConfig.from_settings(args.quality, args.keep)
    except UsageError as e:
        parser.error(str(e))  # as argparse's own: one line, exit 2
    opts = ConvertOptions(
        out=args.out, resolution=args.resolution, resize_mode=args.resize_mode, fps=args.fps, cameras=args.cameras,
        workers=args.workers, shard_size_mb=args.shard_size, compression=args.compression,
        embodiment=args.embodiment, mode="overwrite" if args.overwrite else "append" if args.append else "create",
        strict=args.strict, val_fraction=args.val_fraction, split_by=args.split_by, dedup_against=args.dedup_against,
        quality=quality,
        latents=args.latents, license=args.license, argv=["robofm-convert", *argv],
    )  # fmt: skip
    try:
        check_out(opts.out)
        if opts.mode == "create" and (opts.out / "manifest.json").exists():
            raise UsageError(f"{opts.out} already holds a store: pass --overwrite to replace it or --append to add")
        source = source_module(args.kind).from_args(args)
        summary = convert(source, opts, console)
    except (UsageError, StoreError) as e:
        console.print(f"[red]robofm-convert: error:[/red] {escape(str(e))}", soft_wrap=True)  # one line
        return EXIT_USAGE
    except RobofmError as e:
        console.print(f"[red]robofm-convert: error:[/red] {escape(str(e))}", soft_wrap=True)
        return EXIT_NONE
    print_summary(summary, opts.out, console)
    if summary.kept or summary.skipped_existing:
        print_store_summary(opts.out, console)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
