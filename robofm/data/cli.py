"""`robofm-data`: look at a store before spending compute on it, and keep held-out data out of training.

    robofm-data report STORE [--out DIR] [--window-len 4] [--stride 2] [--patch-size 16]
    robofm-data inspect STORE EPISODE [--out DIR] [--frames 8]
    robofm-data decontaminate --train STORE [STORE ...] --heldout STORE_OR_LEROBOT_DIR [--out VIEW]
                              [--ngram 3] [--task-overlap 0.5] [--quality KEY=VALUE ...]
    robofm-data subset STORE --out VIEW [--task TEXT] [--skip M] [--first N] [--drop-actions]

Exit status: 0 done (decontaminate: whatever it found), 2 usage error (a missing or damaged store, an unknown
episode): one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from robofm.errors import StoreError, UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robofm-data", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="a dataset card: README.md and PNG plots")
    p.add_argument("store", type=Path)
    p.add_argument("--out", type=Path, help="folder for the card (default STORE/card)")
    p.add_argument("--window-len", type=int, default=4, help="for the tokens per epoch (default 4)")
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--patch-size", type=int, default=16)
    p = sub.add_parser("inspect", help="one episode: a strip of frames per camera and its actions and state")
    p.add_argument("store", type=Path)
    p.add_argument("episode")
    p.add_argument("--out", type=Path, help="folder for the PNGs (default outputs/inspect)")
    p.add_argument("--frames", type=int, default=8, help="frames in the strip (default 8)")
    p = sub.add_parser("decontaminate", help="find held-out episodes and tasks in training stores; write views")
    p.add_argument("--train", type=Path, nargs="+", required=True, help="training store(s)")
    p.add_argument("--heldout", type=Path, required=True, help="held-out store, or a LeRobot v3 dataset folder")
    p.add_argument("--out", type=Path, help="write the filtered view here (one store) or one view per store under "
                   "it, with decontamination.json; without it, only report")  # fmt: skip
    p.add_argument("--ngram", type=int, default=3, help="words per task-text n-gram (default 3)")
    p.add_argument("--task-overlap", type=float, default=0.5,
                   help="remove training tasks holding this share of a held-out task's n-grams (default 0.5)")  # fmt: skip
    p.add_argument("--quality", nargs="+", default=[], metavar="KEY=VALUE",
                   help="near-duplicate tolerances, as robofm-convert --quality (signal_tol, frame_tol, max_shift)")  # fmt: skip
    p = sub.add_parser("subset", help="a view of some of a store's episodes (N demonstrations, action-free video)")
    p.add_argument("store", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the view's folder (the shards are not copied)")
    p.add_argument("--task", help="only episodes of this task (its instruction)")
    p.add_argument("--skip", type=int, default=0, help="leave out the first M episodes, in the store's order")
    p.add_argument("--first", type=int, help="keep N episodes after those skipped (default: all)")
    p.add_argument("--drop-actions", action="store_true",
                   help="the kept episodes read as action-free video (NO_ACTION tokens, no action loss)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=True)
    try:
        if args.command == "report":
            from robofm.data.card import write_card

            card = write_card(args.store, args.out or args.store / "card", window_len=args.window_len,
                              stride=args.stride, patch_size=args.patch_size)  # fmt: skip
            print(f"dataset card: {card}")
        elif args.command == "inspect":
            from robofm.data.card import inspect_episode

            for path in inspect_episode(args.store, args.episode, args.out or Path("outputs/inspect"),
                                        frames=args.frames):  # fmt: skip
                print(path)
        elif args.command == "subset":
            from robofm.data.store import subset

            view, kept, left = subset(args.store, args.out, task=args.task, skip=args.skip, first=args.first,
                                      drop_actions=args.drop_actions)  # fmt: skip
            actions = "without their actions" if args.drop_actions else "with their actions"
            console.print(f"{view}: {kept} episode(s) of {args.store} {actions}; {left} left out, each named in "
                          f"{view / 'quality.json'}")  # fmt: skip
        else:
            _decontaminate(args, console)
    except (UsageError, StoreError) as e:
        console.print(f"[red]robofm-data: error:[/red] {escape(str(e))}", soft_wrap=True)  # one line, markup-free
        return 2
    return 0


def _decontaminate(args: argparse.Namespace, console: Console) -> None:
    from robofm.data.decontaminate import DecontaminationConfig, decontaminate
    from robofm.data.quality import QualityConfig

    cfg = DecontaminationConfig(args.ngram, args.task_overlap, QualityConfig.from_settings(args.quality))
    report = decontaminate(args.train, args.heldout, cfg, args.out, console)
    table = Table(title=f"held-out {report['heldout']}: {report['heldout_episodes']} episodes, "
                        f"{len(report['heldout_tasks'])} tasks")  # fmt: skip
    for col in ("training store", "episodes", "removed", "duplicate", "near_duplicate", "task_overlap", "view"):
        table.add_column(col, justify="left" if col in ("training store", "view") else "right")
    for t in report["train"]:
        counts = {r: sum(x["reason"] == r for x in t["removed"]) for r in ("duplicate", "near_duplicate", "task_overlap")}
        table.add_row(t["store"], str(t["episodes"]), str(len(t["removed"])), *map(str, counts.values()), t.get("view", "-"))
    console.print(table)
    for t in report["train"]:
        for r in t["removed"][:20]:
            console.print(f"  {t['store']}: {r['episode_id']} ({r['task']}): {r['reason']} of {r['of']}")
        if len(t["removed"]) > 20:
            console.print(f"  ... {len(t['removed']) - 20} more in the report")
    if args.out:
        views = [t["view"] for t in report["train"]]
        path = views[0] if len(views) == 1 else "[" + ",".join(views) + "]"
        console.print(f"report: {args.out / 'decontamination.json'}\ntrain on the views: data.path={path}")


if __name__ == "__main__":
    sys.exit(main())
