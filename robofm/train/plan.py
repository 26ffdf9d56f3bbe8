"""The plan of a run (printed at start) and `robofm-plan`, the inverse question: for a budget and a dataset, which
model size and how many steps (Chinchilla: ~20 tokens per parameter, C = 6 N D).

The budget is compute (`--flops`, `--gpu-hours`) or wall-clock time on this machine (`--minutes`). For time, each
size's seconds per step are measured by a short probe of real training steps, and the tokens those steps train are
discounted for repetition: repeated epochs are worth less than fresh data (Muennighoff et al. 2023, "Scaling
Data-Constrained Language Models"; see `effective_tokens`)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from robofm.models.config import SIZES, ModelConfig
from robofm.tokenization.build import epoch_tokens

log = logging.getLogger(__name__)
TOKENS_PER_PARAM = 20.0
RATIO_RANGE = (5.0, 500.0)
# Muennighoff et al. 2023 fit the value of repeated data with a decay constant of R_D* = 15.4 repetitions
REPEAT_DECAY = 15.4


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}  # dense


def peak_flops(device) -> float:
    """Dense bf16 peak FLOP/s of a known GPU (0 for the CPU and unknown GPUs: no MFU is reported)."""
    import torch

    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((t * 1e12 for key, t in PEAK_BF16_TFLOPS.items() if key in name), 0.0)


def non_embedding_parameters(cfg: ModelConfig) -> int:
    return cfg.depth * (4 * cfg.dim**2 + 3 * cfg.dim * cfg.ffn_dim)


def plan_rows(cfg, model, builder, dataset, precision: str | None = None) -> list[tuple[str, str]]:
    """The plan's (name, value) rows; `precision` is what trainer.precision resolved to and why ("bf16: ...")."""
    n = sum(p.numel() for p in model.parameters())
    epoch = epoch_tokens(dataset, builder)
    per_sample, windows = epoch.tokens_per_sample, epoch.windows
    steps = cfg.trainer.max_steps
    world = dataset.world_size
    trained = steps * cfg.data.batch_size * world * per_sample
    ratio = trained / n
    effective = effective_tokens(trained, epoch.tokens)
    flops = 6 * n * trained
    rows = [
        ("parameters", f"{n / 1e6:,.2f}M ({non_embedding_parameters(model.cfg) / 1e6:,.2f}M non-embedding)"),
        ("tokens per sample", f"{per_sample:,}"),
        ("windows per epoch", f"{windows:,} ({epoch.tokens / 1e6:,.2f}M tokens)"),
        ("tokens trained", f"{trained / 1e6:,.2f}M over {steps:,} steps of {cfg.data.batch_size} x {world} samples "
                           f"({trained / max(epoch.tokens, 1):.1f} epochs)"),
        ("tokens / parameter", f"{ratio:.1f} (Chinchilla guide ~{TOKENS_PER_PARAM:.0f})"),
        ("effective tokens", f"{effective / 1e6:,.2f}M, {effective / n:.1f} per parameter (repeats discounted)"),
        ("compute", f"6ND = {flops:.3g} FLOPs"),
    ]
    if precision:
        rows.append(("precision", precision))
    mix = dataset.mixture()
    if len(mix) > 1:  # what each store of the mixture gets, and what the sampler actually draws
        rows += [(f"mixture {i}", f"{m['store']}: {m['sampled']:.1%} of {m['draws']:,} draws (weight "
                                  f"{m['weight']:.1%}; {m['episodes']:,} episodes, {m['windows']:,} windows)")
                 for i, m in enumerate(mix)]  # fmt: skip
    if not RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]:
        rows.append(("warning", f"tokens/parameter {ratio:.1f} is outside [{RATIO_RANGE[0]:.0f}, {RATIO_RANGE[1]:.0f}]: "
                                "the model is " + ("under-trained" if ratio < RATIO_RANGE[0] else "small for this data")))
    return rows


def print_plan(cfg, model, builder, dataset, console: Console | None = None, precision: str | None = None) -> None:
    table = Table(title="robofm-train plan", show_header=False)
    for k, v in plan_rows(cfg, model, builder, dataset, precision):
        table.add_row(k, v, style="yellow" if k == "warning" else None)
        if k == "warning":
            log.warning(v)
    (console or Console(stderr=True)).print(table)


def suggest(flops: float, dataset_tokens: float, io: dict) -> list[dict]:
    """Each size with the tokens and compute it would use at ~20 tokens/parameter, marking the one whose
    compute-optimal budget is closest to `flops` (and how many epochs of the dataset that is)."""
    n_opt = math.sqrt(flops / (6 * TOKENS_PER_PARAM))
    rows = []
    for size in SIZES:
        n = ModelConfig.sized(size, **io).expected_parameters()
        tokens = flops / (6 * n)
        rows.append({"size": size, "parameters": n, "tokens": tokens, "tokens_per_param": tokens / n,
                     "epochs": tokens / dataset_tokens if dataset_tokens else float("nan"),
                     "distance": abs(math.log(n / n_opt))})  # fmt: skip
    best = min(rows, key=lambda r: r["distance"])
    for r in rows:
        r["best"] = r is best
    return rows


def effective_tokens(tokens: float, unique: float, r_star: float = REPEAT_DECAY) -> float:
    """What `tokens` trained on `unique` tokens per epoch are worth in fresh tokens (Muennighoff et al. 2023, the
    effective data D'): with R = tokens / U - 1 repetitions, D' = U + U * R* * (1 - exp(-R / R*)), R* = 15.4.
    Within the first epoch D' = tokens; a few epochs are worth nearly as much as fresh data, and D' tends to
    U * (1 + R*) as the epochs grow, so past ~R* repetitions more steps add little."""
    if tokens <= unique or unique <= 0:
        return float(tokens)
    repetitions = tokens / unique - 1
    return unique + unique * r_star * (1 - math.exp(-repetitions / r_star))


def plan_minutes(
    minutes: float,
    sizes: list[str],
    parameters: dict[str, int],
    step_seconds: Callable[[str], float],
    tokens_per_step: int,
    unique: float,
    stop_early: bool = True,
) -> list[dict]:
    """One row per size for a budget of `minutes`: seconds per step (`step_seconds(size)`, a measured probe),
    steps, tokens, epochs of the `unique` tokens per epoch, effective tokens D' (effective_tokens) and D' per
    parameter. The rule: pick the size whose D'/N is closest to Chinchilla's compute-optimal ~20 (in log ratio).
    D' in place of raw tokens moves the pick towards smaller models trained for more epochs than raw tokens
    would, the direction of Muennighoff et al.'s data-constrained compute-optimal frontier, without relying on
    their loss constants, fitted on text models of 10M-9B parameters. Their discount of excess parameters
    (R_N* = 5.3) is not applied: on a store of ~1M tokens it would value every size above ~0.3M parameters alike.

    Sizes are tried in order of growing parameters; with stop_early, once one falls below ~20 the larger ones
    (slower per step, more parameters) can only fall further, and are listed unprobed (step_s None). A size
    whose step_seconds raises MemoryError gets a note and ends the probing."""
    rows: list[dict] = []
    stop = None
    for size in sorted(sizes, key=lambda s: parameters[s]):
        n = parameters[size]
        row = {"size": size, "parameters": n, "step_s": None, "best": False, "note": stop or ""}
        rows.append(row)
        if stop:
            continue
        try:
            step_s = step_seconds(size)
        except MemoryError as e:
            row["note"] = f"out of memory ({e})"
            stop = f"not probed: {size} ran out of memory, and larger sizes need more"
            continue
        steps = int(minutes * 60 / step_s)
        tokens = steps * tokens_per_step
        effective = effective_tokens(tokens, unique)
        epochs = tokens / unique if unique else math.nan
        row.update(step_s=step_s, steps=steps, tokens=tokens, epochs=epochs, effective=effective, ratio=effective / n)
        if stop_early and row["ratio"] < TOKENS_PER_PARAM:
            stop = f"not probed: {size} is already below ~{TOKENS_PER_PARAM:.0f}, and larger sizes fall further"
    probed = [r for r in rows if r["step_s"] is not None]
    if probed:
        best = min(probed, key=lambda r: abs(math.log(max(r["ratio"], 1e-12) / TOKENS_PER_PARAM)))
        best["best"] = True
        best["note"] = f"effective tokens/parameter closest to ~{TOKENS_PER_PARAM:.0f}"
    return rows


def probe_step_seconds(builder, seq, size: str, device, precision: str = "fp32", steps: int = 3,
                       adaln: bool = False) -> float:  # fmt: skip
    """Seconds per optimizer step of `size` on `device`: one warm-up step, then the median of `steps` timed ones,
    each a forward and backward of the real Objective on the batch `seq`, gradient clipping and an AdamW step,
    as robofm-train takes them (without its data loading, validation and checkpoints). The model is robofm-train's
    (the frame before in each NOISY token), with or without adaLN."""
    import torch

    from robofm.models.config import ModelConfig
    from robofm.models.robofm import RobofmModel
    from robofm.objectives.objective import Objective, ObjectiveConfig
    from robofm.train.build import build_optimizer
    from robofm.train.config import OptimConfig
    from robofm.train.parallelize import autocast, clip_grad_norm

    torch.manual_seed(0)
    model = RobofmModel(ModelConfig.sized(size, **_io(builder, adaln))).to(device)
    optimizer = build_optimizer(model, OptimConfig())
    objective = Objective(ObjectiveConfig())
    seq = seq.to(device)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            loss = objective(model, seq)["total"]
        loss.backward()
        clip_grad_norm(model, OptimConfig().grad_clip)  # reads the norm back, as a training step does
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step allocates, and warms caches and kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine(device) -> str:
    """The processor a probe ran on, with its threads and the load at the time (other jobs slow a probe)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return f"{name}, {torch.get_num_threads()} threads, load {load:.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="robofm-plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, help="wall-clock budget on this machine, measured by a probe per size")
    p.add_argument("--flops", type=float, help="compute budget in FLOPs")
    p.add_argument("--gpu-hours", type=float, help="compute budget in GPU hours (with --tflops and --mfu)")
    p.add_argument("--tflops", type=float, default=989.0, help="peak TFLOP/s of one GPU (H100 bf16 dense: 989)")
    p.add_argument("--mfu", type=float, default=0.35, help="expected model FLOPs utilization")
    p.add_argument("--store", nargs="+", required=True, help="the episode store(s) to train on")
    p.add_argument("--window-len", type=int, default=4)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--patch-size", type=int, default=16)
    batch_help = "samples per step (default: 8, as robofm-train, with --minutes; 256 with --flops or --gpu-hours)"
    p.add_argument("--batch-size", type=int, help=batch_help)
    sizes_help = "--minutes: probe these sizes, all of them (default: smallest first, until one is below ~20)"
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), help=sizes_help)
    p.add_argument("--probe-steps", type=int, default=3, help="--minutes: timed steps per size, after one warm-up")
    p.add_argument("--num-workers", type=int, default=2, help="--minutes: loader processes, as data.num_workers")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="--minutes: where to probe")
    p.add_argument("--adaln", action="store_true",
                   help="size the model with adaLN action conditioning, as model.adaln=true (experiment=demo, pretrain)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="--minutes: as trainer.precision (auto: decided per size as robofm-train decides it)")  # fmt: skip
    args = p.parse_args(argv)
    from robofm.data.dataset import EpisodeWindowDataset
    from robofm.errors import UsageError
    from robofm.tokenization.build import TokenizerConfig, build_sequence_builder
    from robofm.tokenization.sequence import SequenceConfig

    if sum(x is not None for x in (args.minutes, args.flops, args.gpu_hours)) != 1:
        raise SystemExit("robofm-plan: give exactly one of --minutes, --flops or --gpu-hours")
    try:
        ds = EpisodeWindowDataset(args.store, args.window_len, args.stride, split="train")
        builder = build_sequence_builder(ds, SequenceConfig(window_len=args.window_len, stride=args.stride),
                                         TokenizerConfig(patch_size=args.patch_size))  # fmt: skip
    except UsageError as e:
        raise SystemExit(f"robofm-plan: {e}") from e
    if args.minutes is not None:
        print_minutes_plan(args, ds, builder)
    else:
        print_flops_plan(args, ds, builder)


def _io(builder, adaln: bool = False) -> dict:
    """ModelConfig.sized's fields for a builder: the data-dependent ones (vocabulary, patch, state, camera and
    action shapes), and the inputs robofm-train builds with (TrainConfig's model.prev_frame_input is on) and adaLN."""
    from robofm.models.config import model_config
    from robofm.train.config import ModelSchema

    cfg = model_config(builder, "debug")
    fields = ("vocab_size", "patch_dim", "state_dim", "max_cameras", "max_patches", "action_chunk_dim")
    return {**{k: getattr(cfg, k) for k in fields}, "prev_frame_input": ModelSchema().prev_frame_input, "adaln": adaln}


def print_flops_plan(args, ds, builder) -> None:
    flops = args.flops or args.gpu_hours * 3600 * args.tflops * 1e12 * args.mfu
    epoch = epoch_tokens(ds, builder)
    per_sample, dataset_tokens = epoch.tokens_per_sample, epoch.tokens
    batch = args.batch_size or 256
    table = Table(title=f"robofm-plan: {flops:.3g} FLOPs on {dataset_tokens / 1e6:,.2f}M tokens per epoch")
    for col in ("size", "parameters", "tokens", "tokens/param", "epochs", "steps"):
        table.add_column(col, justify="right")
    for r in suggest(flops, dataset_tokens, _io(builder, args.adaln)):
        steps = r["tokens"] / (per_sample * batch)
        table.add_row(("-> " if r["best"] else "") + r["size"], f"{r['parameters'] / 1e6:,.1f}M",
                      f"{r['tokens'] / 1e6:,.1f}M", f"{r['tokens_per_param']:,.1f}", f"{r['epochs']:,.1f}",
                      f"{steps:,.0f}", style="bold" if r["best"] else None)  # fmt: skip
    Console().print(table)


def print_minutes_plan(args, ds, builder) -> None:
    """Probe each size on a batch of the store, then print plan_minutes' rows and the pick with its reason.

    A step's seconds are the probe's plus the loading of its batch: on the CPU the loader's `--num-workers`
    processes share the cores with the step, so loading adds load_s / workers; on a GPU they run beside it, and a
    step takes the longer of the two. Validation and checkpoints are not counted."""
    import torch

    from robofm.models.config import ModelConfig
    from robofm.train.precision import resolve_precision

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    epoch = epoch_tokens(ds, builder)
    batch = args.batch_size or 8
    if ds.samples_per_epoch < batch:
        raise SystemExit(f"robofm-plan: the store has {ds.samples_per_epoch} windows, fewer than --batch-size {batch}")
    seq, load_s = _timed_batch(ds, builder, batch)
    loading = load_s / max(args.num_workers, 1)
    sizes = args.sizes or list(SIZES)
    io = _io(builder, args.adaln)
    parameters = {s: ModelConfig.sized(s, **io).expected_parameters() for s in sizes}

    chosen: dict[str, str] = {}  # the precision each size runs in, and why

    def measure(size: str) -> float:
        precision, why = resolve_precision(args.precision, device, ModelConfig.sized(size, **io).dim)
        chosen[why] = chosen.get(why, "") + ("," if why in chosen else "") + size
        log.info("probing %s in %s: %d timed steps of batch %d", size, precision, args.probe_steps, batch)
        try:
            step_s = probe_step_seconds(builder, seq, size, device, precision, args.probe_steps, args.adaln)
        except torch.OutOfMemoryError as e:  # a RuntimeError; plan_minutes stops at a MemoryError
            raise MemoryError(f"batch {batch} on {device}") from e
        return max(step_s, loading) if device.type == "cuda" else step_s + loading

    per_step = batch * epoch.tokens_per_sample
    rows = plan_minutes(args.minutes, sizes, parameters, measure, per_step, epoch.tokens, args.sizes is None)
    combined = "or, if longer," if device.type == "cuda" else "plus"
    console = Console()
    console.print(minutes_table(rows, f"robofm-plan: {args.minutes:g} minutes on {machine(device)}"))
    console.print(
        f"Batch {batch} x {epoch.tokens_per_sample} tokens per step; U = {_count(epoch.tokens)} tokens per epoch. "
        f"D' = U + U R* (1 - exp(-R/R*)), the effective tokens (R = epochs - 1, R* = {REPEAT_DECAY}: Muennighoff "
        f"et al. 2023). s/step: the median of {args.probe_steps} timed steps after a warm-up, {combined} loading a "
        f"batch ({load_s:.2f} s in one process) / {max(args.num_workers, 1)} workers; no validation or checkpoints."
    )
    for why, names in chosen.items():
        console.print(f"precision ({names}): {why}")
    _print_pick(console, rows, batch, " model.adaln=true" if args.adaln else "")


def _timed_batch(ds, builder, batch: int):
    """A batch of the store's first windows, and the seconds loading and tokenizing one batch took in this process
    (the second batch where the store has two: the first also opens the shards)."""
    from torch.utils.data import DataLoader

    n = 2 if ds.samples_per_epoch >= 2 * batch else 1
    loader = iter(DataLoader(ds, batch_size=batch, sampler=range(n * batch), collate_fn=builder))
    for _ in range(n):
        start = time.perf_counter()
        seq = next(loader)
        load_s = time.perf_counter() - start
    return seq, load_s


def _print_pick(console: Console, rows: list[dict], batch: int, extra: str = "") -> None:
    notes = {r["note"]: [] for r in rows if r["note"] and not r["best"]}
    for r in rows:
        notes.get(r["note"], []).append(r["size"])
    for note, names in notes.items():
        console.print(f"{', '.join(names)}: {note}")
    probed = [r for r in rows if r["step_s"] is not None]
    best = next((r for r in probed if r["best"]), None)
    if best is None:
        return
    edge = ""
    if best["ratio"] < TOKENS_PER_PARAM and best is probed[0]:
        edge = " (below it: this budget under-trains even the smallest size)"
    elif best["ratio"] > TOKENS_PER_PARAM and best is probed[-1]:
        edge = " (above it: the largest size probed; --sizes can add larger ones)"
    console.print(
        f"pick: {best['size']} ({_count(best['parameters'])} parameters), {best['steps']:,} steps: "
        f"D'/N = {best['ratio']:.1f} effective tokens per parameter, the closest to ~{TOKENS_PER_PARAM:.0f}"
        f"{edge}.\n  robofm-train model={best['size']} data.batch_size={batch} trainer.max_steps={best['steps']}{extra}"
    )


def _count(x: float) -> str:
    return f"{x / 1e9:,.2f}B" if x >= 1e9 else f"{x / 1e6:,.2f}M" if x >= 1e6 else f"{x / 1e3:,.1f}k"


def minutes_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("size", "params", "s/step", "steps", "tokens", "epochs", "D'", "D'/N"):
        table.add_column(col, justify="right")
    for r in rows:
        cells = [("-> " if r["best"] else "") + r["size"], _count(r["parameters"])]
        if r["step_s"] is None:
            cells += ["-"] * 6
        else:
            cells += [f"{r['step_s']:.3f}", f"{r['steps']:,}", _count(r["tokens"]), f"{r['epochs']:,.1f}"]
            cells += [_count(r["effective"]), f"{r['ratio']:,.1f}"]
        table.add_row(*cells, style="bold" if r["best"] else None)
    return table
