"""`robofm-eval checkpoint=PATH data.path=STORE [split=val] [out=FILE.json] [seed=0] [batches=8] [batch_size=4]
[horizons=1,4,16] [sampler_steps=10] [verdict_sampler_steps=null] [device=cpu]`: held-out metrics against
baselines, printed as tables followed by one verdict line per bar (PASS, FAIL or n/a), and written as JSON (see
robofm.eval.evaluate and robofm.eval.verdicts). The keys are EvalConfig's fields (`--help` lists them with their
types and defaults, `--cfg job` prints the resolved config). Bad input exits with status 2 and a one-line error."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from robofm.cli import parse_command
from robofm.errors import RobofmError
from robofm.eval.evaluate import ACTION_METHODS, EvalConfig, evaluate
from robofm.eval.verdicts import WORDS, line
from robofm.models.card import export_of, record_eval
from robofm.models.diffusion import describe

NAMES = {"data_path": "data.path"}  # the EvalConfig fields whose command-line key is not the field's name


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    """The command line (sys.argv[1:] when None) -> EvalConfig. --help and --cfg job print and exit 0; an unknown
    key, a bad value or a missing required key exits 2 with a one-line error (robofm.cli.parse_command)."""
    return parse_command(EvalConfig, argv, prog="robofm-eval", description=__doc__, names=NAMES)


COLOURS = {True: "green", False: "red", None: "yellow"}


def render(result: dict, console: Console) -> None:
    """The result as two rich tables (actions; the world model per horizon and sampler setting), then one line per
    verdict and the notes."""
    act = result["actions"]
    scored = sum(row["windows"] for row in act["per_embodiment"].values())
    of = f"{scored} of the {result['windows']}" if scored != result["windows"] else f"{scored}"
    table = Table(title=f"Actions: chunk after {result['context_steps']} observations, {of} {result['split']} "
                        f"windows (MSE in robot units; lower is better)")  # fmt: skip
    table.add_column("embodiment")
    table.add_column("dims", justify="right")
    for m in ACTION_METHODS:
        table.add_column(m, justify="right")
    for emb, row in act["per_embodiment"].items():
        means = [None if row[m] is None else sum(row[m]) / len(row[m]) for m in ACTION_METHODS]
        table.add_row(emb, str(row["dims"]), *map(_fmt, means))
    table.add_row("all", "", *(_fmt(act["mse"][m]) for m in ACTION_METHODS), style="bold")
    table.caption = f"token accuracy {_fmt(act['token_accuracy'])}, action loss {_fmt(act['action_loss'])}"
    console.print(table)
    table = Table(title=f"World model: imagined frames ({describe(result['frame_diffusion'])}; higher is better)")
    columns = ["horizon", "sampler steps", "metric", "model", "shuffled actions"]
    columns += ["action use (model - shuffled)", "copy last", "model - copy last"]
    for name in columns:
        table.add_column(name, justify="right")
    for h, row in result["world_model"].items():
        for steps, sampled in row["sampler_steps"].items():
            for metric in ("psnr", "ssim"):
                cells = [sampled["model"], sampled["shuffled_actions"], sampled["action_use"]]
                cells += [row["copy_last"], sampled["gain_over_copy_last"]]
                table.add_row(h, steps, metric.upper(), *(_fmt(c[metric]) for c in cells))
    console.print(table)
    for verdict in result["verdicts"]:
        text = Text(line(verdict))
        text.stylize(f"bold {COLOURS[verdict['passed']]}", 0, len(WORDS[verdict["passed"]]))
        console.print(text, soft_wrap=True)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    console = Console()
    try:
        result = evaluate(cfg, progress=True)
    except RobofmError as e:
        print(f"robofm-eval: error: {e}", file=sys.stderr)
        return 2
    render(result, console)
    if cfg.out:
        console.print(f"written to {cfg.out}")
    export = export_of(cfg.checkpoint)
    if export is not None:  # an export (or a run's): its model card shows this evaluation
        console.print(f"model card updated: {record_eval(export, 'robofm-eval', result)}", soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
