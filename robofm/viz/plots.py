"""PNG plots (matplotlib, Agg): predicted against true actions over an episode, and PSNR against horizon."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window: the visualizer runs on headless machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robofm.viz.rollout import ActionTrace  # noqa: E402


def plot_actions(path: Path, trace: ActionTrace, title: str, stride: int) -> Path:
    """One panel per action dimension: the episode's actions and the policy's greedy chunks (a dot marks each
    chunk's first action), over episode frames."""
    dims = trace.true.shape[1]
    fig, axes = plt.subplots(dims, 1, figsize=(8, 1.6 * dims + 0.8), sharex=True, squeeze=False)
    frames = np.arange(len(trace.true))
    pred_frames = trace.first + np.arange(len(trace.predicted))
    mse = trace.mse()
    for d, ax in enumerate(axes[:, 0]):
        ax.plot(frames, trace.true[:, d], color="black", lw=1.2, label="true")
        ax.plot(pred_frames, trace.predicted[:, d], color="tab:orange", lw=1.2, label="predicted")
        ax.plot(pred_frames[::stride], trace.predicted[::stride, d], ".", color="tab:orange", ms=4)
        ax.set_ylabel(f"a[{d}]")
        ax.text(1.0, 1.0, f"MSE {mse[d]:.4g}", transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("episode frame")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_psnr(path: Path, curves: dict[str, np.ndarray], title: str) -> Path:
    """PSNR (dB) against horizon step (1..H), one line per named curve [H]; a dashed line for baselines."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        steps = np.arange(1, len(values) + 1)
        ax.plot(steps, values, "--" if "baseline" in name else "-", marker="o", ms=3, label=name)
    ax.set_xlabel("horizon (model steps)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
