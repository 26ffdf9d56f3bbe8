"""Where a world model's next-frame estimate stands, per diffusion time, against copying the last frame.

The sampler starts from pure noise (t = 1): there, the frame head's estimate of the clean frame can only come from
the context, and a model whose estimate at t = 1 is worse than the last frame imagines worse frames than copying
it. For each export this prints the mean squared error of the head's clean-frame estimate (x0, in the model's
pixel space) on held-out windows at fixed times, beside the copy-last-frame error on the same patches.

    python benchmarks/frame_times.py RUN_OR_EXPORT [RUN_OR_EXPORT ...] --store outputs/demo/store [--write-results]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, robofm_revision  # noqa: E402

from robofm.data.dataset import EpisodeWindowDataset  # noqa: E402
from robofm.models.diffusion import describe  # noqa: E402
from robofm.models.pretrained import from_pretrained  # noqa: E402

SECTION = "## Frame head: error by diffusion time"
TIMES = (0.05, 0.2, 0.5, 0.8, 0.95, 1.0)


def trained_steps(path: str) -> str:
    """The step of a run folder's latest checkpoint ("?" for a bare export)."""
    latest = Path(path) / "checkpoints" / "latest"
    return latest.read_text().strip().removeprefix("step-").lstrip("0") if latest.is_file() else "?"


def errors(path: str, store: str, windows: int, seed: int) -> tuple[dict[float, float], float, str]:
    """({t: x0 MSE of the head}, copy-last MSE, the diffusion in words) on `windows` val windows."""
    p = from_pretrained(path)
    b, d = p.builder, p.diffusion
    if d.kind != "flow":
        raise SystemExit(f"{path}: only flow-matching frame diffusion is measured here, not {d.kind}")
    ds = EpisodeWindowDataset(store, b.cfg.window_len, b.cfg.stride, split="val", cameras=b.cameras, seed=seed)
    seq = b([ds[i] for i in range(min(windows, len(ds)))])
    x0 = d.clean(seq.frame_x0, seq.frame_prev)
    copy = d.clean(seq.frame_prev, seq.frame_prev)  # the last frame as the estimate
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    valid = seq.frame_valid.float()

    def mse(err: torch.Tensor) -> float:
        return float((err.pow(2).mean(-1) * valid).sum() / valid.sum())

    out = {}
    for t in TIMES:
        tt = torch.full(x0.shape[:2], t)
        x_t, _ = d.add_noise(x0, tt, noise)
        patches, level = seq.patches.clone(), seq.noise_level.clone()
        patches[:, seq.noisy_index], level[:, seq.noisy_index] = x_t.to(patches.dtype), tt
        with torch.no_grad():
            head = p.model(dataclasses.replace(seq, patches=patches, noise_level=level)).frames.float()
        estimate = head if d.prediction == "x0" else x_t - t * head  # velocity eps - x0: x0 = x_t - t v
        out[t] = mse(estimate - x0)
    how = f"{describe(d.settings())}, t ~ logit-normal({d.logit_mean:g}, {d.logit_std:g})"
    return out, mse(copy - x0), how


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("exports", nargs="+", help="run or export folders")
    ap.add_argument("--store", required=True)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    head = "| steps | frame diffusion | " + " | ".join(f"t={t:g}" for t in TIMES) + " | copy last | run |"
    rows = [head, "|" + "---:|" + "---|" + "---:|" * (len(TIMES) + 1) + "---|"]
    for path in args.exports:
        errs, copy, how = errors(path, args.store, args.windows, args.seed)
        cells = [f"**{v:.4f}**" if v < copy else f"{v:.4f}" for v in errs.values()]
        rows.append(f"| {trained_steps(path)} | {how} | " + " | ".join(cells) + f" | {copy:.4f} | `{path}` |")
    text = "\n".join([
        SECTION, "",
        f"`python benchmarks/frame_times.py {' '.join(args.exports)} --store {args.store} --windows {args.windows}` "
        f"(robofm {robofm_revision()}): mean squared error of the frame head's clean-frame estimate on "
        f"{args.windows} held-out windows, at fixed diffusion times (t = 1 is pure noise, where the sampler "
        "starts), beside the last frame as the estimate. Bold: better than copying the last frame.", "", *rows])
    publish(SECTION, text, args.write_results)


if __name__ == "__main__":
    main()
