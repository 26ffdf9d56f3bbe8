"""Per-dimension statistics in one streaming pass: exact mean, std, min and max; approximate quantiles.

Quantiles come from a fixed-size histogram whose bins double in width when the data outgrows them, so
memory is constant however much data passes. Error bound: an estimated quantile differs from the exact
one (numpy's linear interpolation) by at most one bin width, and the bin width is below
2 * (max - min) / (BINS - 1), i.e. under 0.05% of the dimension's range with BINS = 4096
(for a constant dimension the width is ~1e-9 of its value).
"""

from __future__ import annotations

import numpy as np

BINS = 4096
QUANTILES = {"q01": 0.01, "q99": 0.99}


class _Histogram:
    """Histogram of one dimension on a grid of bins [k * width, (k + 1) * width), BINS of them from bin k0.

    The grid is anchored at 0, so doubling the width merges bins pairwise. The width doubles only when the
    occupied bins and the new values span more than BINS bins, i.e. when the data spans more than
    (BINS - 1) * old width; hence width < 2 * (max - min) / (BINS - 1) after any doubling.
    """

    def __init__(self) -> None:
        self.counts = np.zeros(BINS, dtype=np.int64)
        self.k0 = 0
        self.width = 0.0

    def _fit(self, kmin: int, kmax: int) -> None:
        """Move or coarsen the grid until bins kmin..kmax and every occupied bin lie inside it."""
        while True:
            occupied = np.nonzero(self.counts)[0]
            lo = min(kmin, self.k0 + int(occupied[0])) if len(occupied) else kmin
            hi = max(kmax, self.k0 + int(occupied[-1])) if len(occupied) else kmax
            if hi - lo + 1 <= BINS:
                shifted = np.zeros(BINS, dtype=np.int64)
                shifted[self.k0 - lo + occupied] = self.counts[occupied]
                self.counts, self.k0 = shifted, lo
                return
            merged = np.zeros(BINS, dtype=np.int64)
            new_k0 = self.k0 // 2
            np.add.at(merged, (self.k0 + occupied) // 2 - new_k0, self.counts[occupied])
            self.counts, self.k0, self.width = merged, new_k0, self.width * 2
            kmin, kmax = kmin // 2, kmax // 2

    def add(self, x: np.ndarray) -> None:
        if self.width == 0.0:
            span = float(x.max() - x.min())
            self.width = max(span * (1 + 1e-6) / (BINS - 1), float(np.abs(x).max()) * 1e-9, 1e-12)
        kf = np.floor(x / self.width)  # in float64 first: a value far outside the grid overflows int64
        if kf.min() < self.k0 or kf.max() >= self.k0 + BINS:
            self._fit(int(kf.min()), int(kf.max()))  # Python ints: any magnitude
            kf = np.floor(x / self.width)
        self.counts += np.bincount(kf.astype(np.int64) - self.k0, minlength=BINS)

    def _order_statistic(self, i: int, cum: np.ndarray) -> float:
        """Estimate of the i-th smallest value (0-based): it lies in the same bin, so within one width."""
        b = int(np.searchsorted(cum, i, side="right"))
        before = cum[b - 1] if b > 0 else 0
        return (self.k0 + b + (i - before + 0.5) / self.counts[b]) * self.width

    def quantile(self, q: float, vmin: float, vmax: float) -> float:
        """numpy's "linear" quantile, interpolating between estimated order statistics."""
        cum = np.cumsum(self.counts)
        rank = q * (int(cum[-1]) - 1)
        i = int(np.floor(rank))
        j = min(i + 1, int(cum[-1]) - 1)
        frac = rank - i
        value = (1 - frac) * self._order_statistic(i, cum) + frac * self._order_statistic(j, cum)
        return float(min(max(value, vmin), vmax))


class RunningStats:
    """Streaming statistics of [N, D] arrays, merged with Chan's parallel update for mean and variance."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.hists: list[_Histogram] = []

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            return
        n_b, mean_b = len(x), x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            self.min, self.max = x.min(axis=0), x.max(axis=0)
            self.hists = [_Histogram() for _ in range(x.shape[1])]
        else:
            if x.shape[1] != len(self.mean):
                raise ValueError(f"expected {len(self.mean)} dimensions, got {x.shape[1]}")
            n = self.n + n_b
            delta = mean_b - self.mean
            self.mean = self.mean + delta * n_b / n
            self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / n
            self.n = n
            self.min, self.max = np.minimum(self.min, x.min(axis=0)), np.maximum(self.max, x.max(axis=0))
        for d, h in enumerate(self.hists):
            h.add(x[:, d])

    def result(self) -> dict[str, list[float]]:
        if self.mean is None:
            return {}
        out = {
            "count": self.n,
            "mean": self.mean.tolist(),
            "std": np.sqrt(self.m2 / self.n).tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
        }
        for key, q in QUANTILES.items():
            out[key] = [h.quantile(q, lo, hi) for h, lo, hi in zip(self.hists, self.min, self.max, strict=True)]
        return out

    def quantile_error_bound(self) -> np.ndarray:
        """Per-dimension bound on |estimated - exact| of any quantile (one bin width)."""
        return np.array([h.width for h in self.hists])
