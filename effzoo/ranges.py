"""Activation ranges for int8: streaming statistics of each calibrated tensor, and the range methods.

Statistics (collected by the calibrate step in one bounded-memory pass): exact running min/max per tensor, and
a streaming histogram of strided samples whose bin edges are multiples of a width w (zero is always an edge)
that doubles, merging bin pairs exactly, when the range outgrows it.

Range methods (activations are uint8, asymmetric, so 0 is always representable):
  * max:         [min, max];
  * percentile:  [q_(1-p), q_p] of the distribution (each tail (100-p)%), widened to include 0, within [min, max];
  * kl_divergence: TensorRT's entropy calibration adapted to asymmetric uint8: candidate ranges shrink
    [min, max] proportionally toward 0; for each, P = the histogram inside the range with the outliers
    folded into the edge bins, Q = P quantized to 256 levels and expanded back over P's non-empty bins; the
    range with the smallest KL(P || Q) wins. (ONNX Runtime's Entropy calibrator builds a histogram symmetric
    about 0 and quantizes it to 128 bins, so a non-negative ReLU6 output gets only 64 levels' worth of
    candidates: it clipped lite0's head from [0, 6] to [0, 0.38] and lost 9 points.)
  * mse: the range with the smallest expected squared quantization error of the tensor over its histogram
    (rounding noise of the candidate's step inside the range, the distance to the edge outside it), over the same
    candidates as kl_divergence. For a consumer y = W x the output error is W e, whose expected energy is
    ||W||_F^2 / n times the input's mean squared error for white noise: minimising the tensor's error minimises its
    consumers' (as NNCF's MSE range estimator and AIMET's tf_enhanced do).
"""
from __future__ import annotations

import numpy as np

import onnx
from effzoo.common import ZooError

# --------------------------------------------------------------------------------------------------
# streaming statistics


class StreamingHistogram:
    """Histogram with bins [k*w, (k+1)*w); w doubles (exact pair merge) when more than 2*num_bins are needed."""

    def __init__(self, num_bins: int = 2048):
        self.num_bins = num_bins
        self.width = None
        self.k0 = 0
        self.counts = np.zeros(0, np.int64)

    def add(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if self.width is None:
            span = max(hi - lo, abs(hi), abs(lo), 1e-12)
            self.width = span / self.num_bins
        while True:
            klo, khi = int(np.floor(lo / self.width)), int(np.floor(hi / self.width))
            new_lo = min(klo, self.k0) if self.counts.size else klo
            new_hi = max(khi, self.k0 + self.counts.size - 1) if self.counts.size else khi
            if new_hi - new_lo + 1 <= 2 * self.num_bins:
                break
            self._coarsen()
        if self.counts.size == 0:
            self.k0, self.counts = new_lo, np.zeros(new_hi - new_lo + 1, np.int64)
        elif new_lo < self.k0 or new_hi > self.k0 + self.counts.size - 1:
            grown = np.zeros(new_hi - new_lo + 1, np.int64)
            grown[self.k0 - new_lo:self.k0 - new_lo + self.counts.size] = self.counts
            self.k0, self.counts = new_lo, grown
        idx = np.floor(x / self.width).astype(np.int64) - self.k0
        self.counts += np.bincount(np.clip(idx, 0, self.counts.size - 1), minlength=self.counts.size)

    def _coarsen(self) -> None:
        """Double the width: bin k -> floor(k/2), exact."""
        self.width *= 2
        if self.counts.size:
            k = np.arange(self.k0, self.k0 + self.counts.size)
            nk = np.floor_divide(k, 2)
            merged = np.zeros(nk[-1] - nk[0] + 1, np.int64)
            np.add.at(merged, nk - nk[0], self.counts)
            self.k0, self.counts = int(nk[0]), merged

    def edges(self) -> np.ndarray:
        return (np.arange(self.k0, self.k0 + self.counts.size + 1) * self.width).astype(np.float64)


class TensorStats:
    """Exact min/max and a streaming histogram of samples, for one tensor."""

    def __init__(self, num_bins: int):
        self.min, self.max, self.hist, self.count = np.inf, -np.inf, StreamingHistogram(num_bins), 0

    def update(self, tmin: float, tmax: float, sample: np.ndarray) -> None:
        self.min, self.max = min(self.min, float(tmin)), max(self.max, float(tmax))
        self.hist.add(sample.astype(np.float64, copy=False))
        self.count += sample.size


def stats_to_arrays(stats: dict[str, TensorStats]) -> dict[str, np.ndarray]:
    """Flatten statistics into arrays for an npz file."""
    names = list(stats)
    out = {"names": np.asarray(names, dtype=str),
           "min": np.array([stats[n].min for n in names]), "max": np.array([stats[n].max for n in names]),
           "width": np.array([stats[n].hist.width or 0.0 for n in names]),
           "k0": np.array([stats[n].hist.k0 for n in names], np.int64),
           "samples": np.array([stats[n].count for n in names], np.int64)}
    for i, n in enumerate(names):
        out[f"counts{i}"] = stats[n].hist.counts
    return out


def arrays_to_hist(arrs, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of tensor i of a stats npz."""
    counts = arrs[f"counts{i}"]
    edges = (np.arange(arrs["k0"][i], arrs["k0"][i] + counts.size + 1) * arrs["width"][i]).astype(np.float64)
    return counts, edges


# --------------------------------------------------------------------------------------------------
# range methods


def percentile_range(counts: np.ndarray, edges: np.ndarray, tmin: float, tmax: float, p: float) -> tuple:
    """[q_(1-p/100), q_(p/100)] from the histogram (linear within a bin), widened to 0, within [min, max]."""
    if not 50.0 < p <= 100.0:
        raise ZooError(f"percentile {p}: expected 50 < percentile <= 100")
    total = counts.sum()
    if total == 0:
        return min(tmin, 0.0), max(tmax, 0.0)
    cdf = np.concatenate([[0.0], np.cumsum(counts) / total])
    q_hi = float(np.interp(p / 100.0, cdf, edges)) if p < 100 else tmax
    q_lo = float(np.interp(1.0 - p / 100.0, cdf, edges)) if p < 100 else tmin
    lo, hi = max(tmin, q_lo), min(tmax, q_hi)
    return min(lo, 0.0), max(hi, 0.0)


def _kl(p: np.ndarray, sliced: np.ndarray, levels: int) -> float:
    """KL(P || Q), TensorRT-style: P = the bins in range with outliers folded into the edge bins; Q = the
    in-range bins *without* outliers quantized to `levels` groups, expanded over the non-empty bins."""
    starts = np.arange(levels) * p.size // levels
    sizes = np.diff(np.append(starts, p.size))
    nonzero = sliced > 0
    sums = np.add.reduceat(sliced, starts)
    counts = np.add.reduceat(nonzero.astype(np.float64), starts)
    per_bin = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    q = np.repeat(per_bin, sizes) * nonzero
    ps, qs = p / p.sum(), q / q.sum()
    mask = ps > 0
    return float(np.sum(ps[mask] * np.log(ps[mask] / np.maximum(qs[mask], 1e-12))))


def kl_range(counts: np.ndarray, edges: np.ndarray, tmin: float, tmax: float, levels: int = 256,
             candidates: int = 128) -> tuple:
    """Entropy calibration for an asymmetric range (see module docstring): returns (lo, hi)."""
    lo, hi = min(tmin, 0.0), max(tmax, 0.0)
    total = counts.sum()
    if total == 0 or hi - lo <= 0:
        return lo, hi
    zero_idx = int(np.clip(np.searchsorted(edges, 0.0), 0, counts.size))
    n_neg, n_pos = zero_idx, counts.size - zero_idx
    span = n_neg + n_pos
    if span <= levels:
        return lo, hi
    best, best_kl = (lo, hi), np.inf
    for frac in np.linspace(levels / span, 1.0, candidates):
        kn, kp = int(round(n_neg * frac)), int(round(n_pos * frac))
        if kn + kp < levels:
            continue
        a, b = zero_idx - kn, zero_idx + kp
        sliced = counts[a:b].astype(np.float64)
        p = sliced.copy()
        p[0] += counts[:a].sum()
        p[-1] += counts[b:].sum()
        kl = _kl(p, sliced, levels)
        if kl < best_kl:
            best_kl, best = kl, (float(edges[a]) if kn else 0.0, float(edges[b]) if kp else 0.0)
    rlo, rhi = best
    return min(max(rlo, tmin), 0.0), max(min(rhi, tmax), 0.0)


def quantization_mse(counts: np.ndarray, edges: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     levels: int = 256) -> np.ndarray:
    """Expected squared error per value of quantizing the histogram's values to `levels` steps over [lo, hi]
    (arrays of candidate ranges): step^2 / 12 for a value inside, its squared distance to the range outside
    (bin centres, plus the bin's own width^2 / 12)."""
    centres = (edges[:-1] + edges[1:]) / 2
    width2 = float(np.mean(np.diff(edges)) ** 2) / 12
    lo, hi = np.atleast_1d(lo)[:, None], np.atleast_1d(hi)[:, None]
    step2 = ((hi - lo) / (levels - 1)) ** 2 / 12
    outside = np.maximum(centres[None, :] - hi, 0) ** 2 + np.maximum(lo - centres[None, :], 0) ** 2
    inside = (centres[None, :] >= lo) & (centres[None, :] <= hi)
    err = np.where(inside, step2, outside + width2)
    return (err * counts[None, :]).sum(axis=1) / max(counts.sum(), 1)


def mse_range(counts: np.ndarray, edges: np.ndarray, tmin: float, tmax: float, levels: int = 256,
              candidates: int = 128) -> tuple:
    """The candidate range (see module docstring) with the smallest expected squared quantization error."""
    lo, hi = min(tmin, 0.0), max(tmax, 0.0)
    if counts.sum() == 0 or hi - lo <= 0:
        return lo, hi
    fracs = np.linspace(1.0 / candidates, 1.0, candidates)
    errors = quantization_mse(counts.astype(np.float64), edges, lo * fracs, hi * fracs, levels)
    best = fracs[int(np.argmin(errors))]
    return float(lo * best), float(hi * best)


def full_range_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors whose range is never clipped by a histogram method: outputs of bounded activations (Clip, i.e.
    ReLU6: the network was trained with that bound and ORT folds the Clip into the producer's quantization)
    and the classifier's input (the pooled features; clipping them shifts every logit)."""
    keep = set()
    for n in model.graph.node:
        if n.op_type == "Clip":
            keep.add(n.output[0])
        if n.op_type in ("Gemm", "MatMul"):
            keep.add(n.input[0])
    producers = {o: n for n in model.graph.node for o in n.output}
    for t in list(keep):  # through shape-only ops back to the pooling output
        node = producers.get(t)
        while node is not None and node.op_type in ("Reshape", "Flatten", "Squeeze"):
            keep.add(node.input[0])
            node = producers.get(node.input[0])
    return keep


def compute_ranges(arrs, method: str, *, percentile: float | None = None, levels: int | None = None,
                   candidates: int | None = None, keep_full: set[str] = frozenset()) -> dict:
    """Per-tensor (lo, hi) for a method ('max', 'percentile', 'kl_divergence', 'mse') from a stats npz; tensors in
    `keep_full` get [min, max] whatever the method."""
    out = {}
    for i, name in enumerate(arrs["names"].tolist()):
        tmin, tmax = float(arrs["min"][i]), float(arrs["max"][i])
        if method == "max" or name in keep_full:
            out[name] = (min(tmin, 0.0), max(tmax, 0.0))
            continue
        counts, edges = arrays_to_hist(arrs, i)
        if method == "percentile":
            out[name] = percentile_range(counts, edges, tmin, tmax, float(percentile))
        elif method == "kl_divergence":
            out[name] = kl_range(counts, edges, tmin, tmax, int(levels), int(candidates))
        elif method == "mse":
            out[name] = mse_range(counts, edges, tmin, tmax, int(levels), int(candidates))
        else:
            raise ZooError(f"calibrate method {method!r}: expected max, percentile, kl_divergence or mse")
    return out
