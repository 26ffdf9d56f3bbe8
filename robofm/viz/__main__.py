"""`robofm-viz` (or `python -m robofm.viz`): an imagined rollout beside the real episode, as videos, PNGs and one
HTML report.

    robofm-viz checkpoint=RUN_OR_EXPORT data.path=STORE [episode=ep-000003] [start=0] [horizon=16] [out=DIR]
               [sampler_steps=10] [seed=0] [what_if=shuffled,zero,reversed] [eval=EVAL.json]

Without `episode`, the longest held-out (val) episode. `eval` puts the held-out metrics of a `robofm-eval ...
out=EVAL.json` at the top of the report.

"What if": the same context is also imagined, with the same noise, under each of `what_if`'s edited action
sequences (by default the episode's actions shuffled in time, zero, and played backwards; also scale:F and
file:PATH.npy; none for no what-if), so a person sees whether the imagined arm follows the command.

Writes into `out` (default outputs/viz/EPISODE-START): per camera rollout_CAM.mp4/.gif (real | imagined |
|difference|), whatif_CAM.mp4/.gif (real | imagined under the episode's actions | under each what-if) and
contact_CAM.png (every row, step by step); actions.png, psnr.png, metrics.json and report.html, whose path it
prints. The keys are VizConfig's
fields (`--help` lists them with their types and defaults, `--cfg job` prints the resolved config). Exit status 2
on a usage error.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robofm.cli import parse_command, settings_of
from robofm.errors import RobofmError, UsageError
from robofm.sim.tasks import DEMONSTRATION_KINDS
from robofm.viz.report import Report, Table, write_report

log = logging.getLogger("robofm")

SAME_FRAMES_DB = 40.0  # what-if frames this close to the real-action ones get a note in the report
VERDICT_WORDS = {True: "PASS", False: "FAIL", None: "n/a"}  # robofm-eval's verdicts' passed, as it prints them


@dataclass
class VizConfig:
    """What `robofm-viz` shows: the keys of its command line (data_path is `data.path` there)."""

    checkpoint: str = field(metadata={"help": "a run, checkpoint or export folder"})
    data_path: str = field(metadata={"help": "the episode store"})
    episode: str | None = field(default=None, metadata={"help": "episode id; null: the longest val episode"})
    start: int = field(default=0, metadata={"help": "the frame the context starts at"})
    horizon: int = field(default=16, metadata={"help": "imagined steps (capped by the episode)"})
    out: str | None = field(default=None, metadata={"help": "output folder; null: outputs/viz/EPISODE-START"})
    sampler_steps: int = 10
    seed: int = 0
    what_if: str | None = field(default="shuffled,zero,reversed", metadata={
        "help": "comma-separated edits of the actions imagined beside the episode's own: shuffled, zero, reversed, "
                "scale:F, file:PATH.npy; none for no what-if"})  # fmt: skip
    eval: str | None = field(default=None, metadata={"help": "a robofm-eval out=FILE.json for the report"})


NAMES = {"data_path": "data.path"}  # the VizConfig fields whose command-line key is not the field's name


def parse_args(argv: list[str] | None = None) -> dict:
    """The command line (sys.argv[1:] when None) -> {key: typed value} of VizConfig, keyed as on the command line.
    --help and --cfg job print and exit 0; an unknown key, a bad value or a missing required key exits 2 with a
    one-line error (robofm.cli.parse_command)."""
    cfg = parse_command(VizConfig, argv, prog="robofm-viz", description=__doc__, names=NAMES)
    return settings_of(cfg, NAMES)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        report = visualize(args)
    except RobofmError as e:
        print(f"robofm-viz: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {report}")


def visualize(args: dict) -> Path:
    """Compute the rollouts and write every file; returns the report's path."""
    import torch

    from robofm.data.store import EpisodeStore
    from robofm.models.pretrained import from_pretrained
    from robofm.viz import rollout as ro

    store = EpisodeStore(args["data.path"])
    held_out = _read_eval(args["eval"])  # checked before the slow part, as what_if
    pretrained = from_pretrained(args["checkpoint"])
    builder = pretrained.builder
    if args["episode"] is None:
        val = [e for e in store.episodes if e.split == "val"] or store.episodes
        args = {**args, "episode": max(val, key=lambda e: e.length).id}
        log.info("episode=%s: the longest %s episode", args["episode"], "val" if val[0].split == "val" else "")
    ep = ro.open_episode(store, args["episode"], builder, args["start"], args["horizon"])
    mask = ep.context["action_mask"][0]  # the what-ifs are checked before the slow part
    edited = {spec: ro.edit_actions(spec, ep.future_actions, mask, args["seed"]) for spec in ro.what_if_specs(
        args["what_if"])}  # fmt: skip
    out = Path(args["out"] or Path("outputs") / "viz" / f"{ep.info.id}-{ep.start}")
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        imagined = ro.imagine_frames(pretrained, ep, ep.future_actions, args["sampler_steps"], args["seed"])
        # same seed: what differs from `imagined` is what the model makes of the actions
        what_if = {spec: ro.imagine_frames(pretrained, ep, actions, args["sampler_steps"], args["seed"])
                   for spec, actions in edited.items()}  # fmt: skip
        trace = ro.trace_actions(pretrained, store, ep.info)
    metrics = _metrics(args, ep, imagined, what_if, trace, builder.cameras, pretrained.diffusion.settings())
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    fps = max(1.0, store.fps / builder.cfg.stride)
    return _write_files(out, args, ep, imagined, what_if, trace, builder, metrics, fps, held_out)


def _read_eval(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"eval={path} cannot be read: {e}") from e
    keys = ("actions", "world_model", "windows", "split", "store", "verdicts")
    if not isinstance(result, dict) or not set(keys) <= result.keys():
        raise UsageError(f"eval={path} is not a result of this robofm-eval (robofm-eval ... out=FILE.json): it lacks "
                         f"{[k for k in keys if not isinstance(result, dict) or k not in result]}")  # fmt: skip
    return result


def _metrics(args, ep, imagined, what_if, trace, cameras, diffusion) -> dict:
    from robofm.viz.rollout import psnr

    baseline = np.broadcast_to(ep.last_context, ep.real.shape)
    per_camera = psnr(ep.real, imagined)  # [H, C]
    model = per_camera.mean(1)
    m = {
        "episode": ep.info.id, "task": ep.info.task, "kind": ep.info.kind_name, "start": ep.start,
        "horizon": ep.horizon,
        "requested_horizon": ep.requested_horizon, "sampler_steps": args["sampler_steps"], "seed": args["seed"],
        "frame_diffusion": diffusion, "cameras": list(cameras), "frame_index": ep.frame_index.tolist(),
        "psnr": model.tolist(),  # per horizon step, mean over cameras
        "psnr_copy_last": psnr(ep.real, baseline).mean(1).tolist(),
        "psnr_per_camera": {c: per_camera[:, i].tolist() for i, c in enumerate(cameras)},
        "action_mse": trace.mse().tolist(),
        "action_mse_baselines": {name: v.tolist() for name, v in trace.baseline_mse().items()},
    }  # fmt: skip
    m["what_if"] = {}
    for spec, frames in what_if.items():
        under = psnr(ep.real, frames).mean(1)
        m["what_if"][spec] = {
            "psnr": under.tolist(),
            "psnr_vs_imagined": psnr(imagined, frames).mean(1).tolist(),  # how far the edit moved the imagined frames
            "action_use": (model - under).tolist(),  # PSNR under the episode's actions minus under the edit's
        }
    return m


def _write_files(out, args, ep, imagined, what_if, trace, builder, metrics, fps, held_out) -> Path:
    from robofm.viz import plots, video
    from robofm.viz.rollout import psnr

    kind = f", kind {metrics['kind']}" if metrics["kind"] else ""
    report = Report(f"robofm rollout: episode {ep.info.id} ({ep.info.task}{kind}) from frame {ep.start}")
    if ep.info.kind not in DEMONSTRATION_KINDS:
        report.notes.append(f"a {metrics['kind']} episode: its executed actions are perturbed or exploring, not a "
                            "demonstration, so the policy's predicted actions are not meant to follow them (robofm-eval "
                            "scores the policy on demonstrations); the imagined frames are meant to")  # fmt: skip
    if ep.horizon < ep.requested_horizon:
        report.notes.append(f"horizon {ep.requested_horizon} capped to {ep.horizon}: the episode has "
                            f"{ep.info.length} frames")  # fmt: skip
    same = [spec for spec, w in metrics["what_if"].items() if min(w["psnr_vs_imagined"]) >= SAME_FRAMES_DB]
    if same:
        report.notes.append(f"under {', '.join(same)} actions the imagined frames barely change (PSNR >= "
                            f"{SAME_FRAMES_DB:.0f} dB against those under the episode's actions): the model "
                            "makes little of the actions here")  # fmt: skip
    if held_out is not None:
        report.tables += _eval_tables(held_out)
    report.tables.append(_frame_table(metrics))
    report.tables.append(_action_table(metrics))
    factor = video.upscale_factor(ep.real.shape[2])
    steps = [f"t+{h + 1}" for h in range(ep.horizon)]
    for c, cam in enumerate(builder.cameras):
        real, imag = ep.real[:, c], imagined[:, c]
        diff = [video.difference(r, i) for r, i in zip(real, imag, strict=True)]
        score = psnr(real, imag)
        frames = [video.side_by_side([real[h], imag[h], diff[h]], ["real", "imagined", "|difference|"],
                                     f"{cam}  step {h + 1}/{ep.horizon}  PSNR {score[h]:.1f} dB", factor)
                  for h in range(ep.horizon)]  # fmt: skip
        gif = video.write_gif(out / f"rollout_{cam}.gif", frames, fps)
        mp4 = video.write_mp4(out / f"rollout_{cam}.mp4", frames, fps)
        report.videos.append((f"{cam}: real | imagined | |difference| under the episode's actions", gif, mp4))
        rows = [("real", real), ("imagined", imag), ("|difference|", np.stack(diff))]
        rows += [(_short(spec), frames[:, c]) for spec, frames in what_if.items()]
        if what_if:
            labels = ["real", "true actions", *(_short(spec) for spec in what_if)]
            frames = [video.side_by_side([real[h], imag[h], *(w[h, c] for w in what_if.values())], labels,
                                         f"{cam}  step {h + 1}/{ep.horizon}  imagined under other actions", factor)
                      for h in range(ep.horizon)]  # fmt: skip
            gif = video.write_gif(out / f"whatif_{cam}.gif", frames, fps)
            mp4 = video.write_mp4(out / f"whatif_{cam}.mp4", frames, fps)
            report.videos.append((f"{cam}: what if: real | imagined under the episode's actions | under "
                                  f"{' | '.join(what_if)} actions", gif, mp4))  # fmt: skip
        sheet = video.write_png(out / f"contact_{cam}.png", video.contact_sheet(rows, steps, factor))
        report.images.append((f"{cam}: contact sheet", sheet))
    title = f"episode {ep.info.id}, stride {builder.cfg.stride}"
    report.images.insert(0, ("Predicted (greedy) against true actions", plots.plot_actions(
        out / "actions.png", trace, title, builder.cfg.stride)))  # fmt: skip
    curves = {"imagined": metrics["psnr"], "copy-last-frame baseline": metrics["psnr_copy_last"]}
    curves.update({f"imagined under {spec} actions": w["psnr"] for spec, w in metrics["what_if"].items()})
    curves = {name: np.asarray(values) for name, values in curves.items()}
    report.images.insert(0, ("PSNR against horizon", plots.plot_psnr(out / "psnr.png", curves, title)))
    return write_report(out / "report.html", report)


def _frame_table(m: dict) -> Table:
    from robofm.models.diffusion import describe

    header = ["step", "frame", "PSNR imagined (dB)", "PSNR copy-last-frame (dB)"]
    columns = [m["psnr"], m["psnr_copy_last"]]
    for spec, w in m["what_if"].items():
        header.append(f"PSNR under {spec} actions (dB)")
        columns.append(w["psnr"])
    rows = [[h + 1, int(m["frame_index"][h]), *(float(c[h]) for c in columns)] for h in range(m["horizon"])]
    return Table(f"World model: {m['sampler_steps']} sampler steps ({describe(m['frame_diffusion'])}), "
                 f"seed {m['seed']}, PSNR mean over cameras", header, rows)  # fmt: skip


def _eval_tables(result: dict) -> list[Table]:
    """robofm-eval's result: its verdicts, action MSE against its baselines, and imagined-frame PSNR/SSIM per horizon
    and sampler setting (copy_last, which samples nothing, repeated on each setting's row)."""
    action_methods, frame_methods = result["methods"]["actions"], result["methods"]["frames"]
    differences = result["methods"]["frame_differences"]
    where = f"{result['windows']} {result['split']} windows of {result['store']}"
    bars = [[VERDICT_WORDS[v["passed"]], v["bar"], v["detail"]] for v in result["verdicts"]]
    caption = f"Held-out bars ({where}; frame bars at {result['verdict_sampler_steps']} sampler steps)"
    verdicts = Table(caption, ["verdict", "bar", "numbers"], bars)
    mse = result["actions"]["mse"]
    actions = Table(f"Held-out actions ({where}): MSE in robot units, lower is better",
                    action_methods, [[_num(mse[m]) for m in action_methods]])  # fmt: skip
    rows = []
    for h, row in result["world_model"].items():
        for steps, sampled in row["sampler_steps"].items():
            cells = {**row, **sampled}  # copy_last beside the sampled methods and their differences
            for metric in ("psnr", "ssim"):
                values = [_num(cells[m][metric]) for m in frame_methods + differences]
                rows.append([int(h), int(steps), metric, *values])
    header = ["horizon", "sampler steps", "metric", *frame_methods, *differences]
    frames = Table(f"Held-out imagined frames ({where}), higher is better", header, rows)
    return [verdicts, actions, frames]


def _short(spec: str) -> str:
    """A what-if spec as a panel label: a file's name, not its path."""
    kind, _, arg = spec.partition(":")
    return f"file {Path(arg).name}" if kind == "file" else spec


def _num(value) -> float | str:
    return "n/a" if value is None else float(value)


def _action_table(m: dict) -> Table:
    baselines = m["action_mse_baselines"]
    rows = [[d, float(v), *(float(b[d]) for b in baselines.values())] for d, v in enumerate(m["action_mse"])]
    return Table("Policy: greedy action chunks along the episode, MSE in robot units, beside baselines",
                 ["dimension", "MSE policy", *(f"MSE {name}" for name in baselines)], rows)  # fmt: skip


if __name__ == "__main__":
    main()
