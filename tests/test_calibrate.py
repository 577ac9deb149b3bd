"""Calibration math on known distributions, streaming histograms, class-balanced sampling, in-graph stats."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from effzoo import calibration_split, ranges, shard_io
from effzoo.common import ZooError
from effzoo.steps import calibrate
from onnx import TensorProto, helper


def hist_of(x, bins=2048):
    h = ranges.StreamingHistogram(bins)
    h.add(np.asarray(x, np.float64))
    return h.counts, h.edges()


def test_streaming_histogram_is_exact_across_batches():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 10_000), rng.normal(3, 5, 10_000)  # the second batch widens the range
    h = ranges.StreamingHistogram(256)
    h.add(a)
    h.add(b)
    assert h.counts.sum() == 20_000 and h.counts.size <= 512
    edges = h.edges()
    ref, _ = np.histogram(np.concatenate([a, b]), bins=edges)
    assert np.array_equal(ref, h.counts)
    assert any(abs(e) < 1e-12 for e in edges)  # zero is an edge


def test_percentile_hand_computed():
    # 100 values per bin over bins [0,1),[1,2),...,[9,10): the 95th percentile is 9.5 (linear within the bin)
    counts, edges = np.full(10, 100), np.arange(11, dtype=float)
    assert ranges.percentile_range(counts, edges, 0.0, 10.0, 95.0) == pytest.approx((0.0, 9.5))
    # signed: 2.5% each tail of [-5, 5] uniform bins -> [-4.75, 4.75]
    counts, edges = np.full(10, 100), np.arange(-5, 6, dtype=float)
    assert ranges.percentile_range(counts, edges, -5.0, 5.0, 97.5) == pytest.approx((-4.75, 4.75))
    with pytest.raises(ZooError, match="percentile 30.0: expected 50 < percentile <= 100"):
        ranges.percentile_range(counts, edges, -5.0, 5.0, 30.0)


def test_percentile_on_known_distribution():
    rng = np.random.default_rng(1)
    x = rng.exponential(1.0, 200_000)
    counts, edges = hist_of(x)
    lo, hi = ranges.percentile_range(counts, edges, x.min(), x.max(), 99.9)
    assert lo == 0.0 and hi == pytest.approx(np.log(1000), rel=0.02)  # exponential quantile: -ln(1 - p)


def test_kl_value_hand_computed():
    # P = [1, 1, 0, 2] (outliers folded in), sliced = [1, 1, 0, 1], 2 levels:
    # groups {0,1}: sum 2 over 2 non-empty -> q = [1, 1]; {2,3}: sum 1 over 1 non-empty -> q = [0, 1]
    # normalized p = [.25, .25, 0, .5], q = [1/3, 1/3, 0, 1/3] -> KL = .5 ln(.75) + .5 ln(1.5)
    kl = ranges._kl(np.array([1.0, 1.0, 0.0, 2.0]), np.array([1.0, 1.0, 0.0, 1.0]), 2)
    assert kl == pytest.approx(0.5 * np.log(0.75) + 0.5 * np.log(1.5))


def test_kl_keeps_a_compact_distribution_and_clips_a_rare_outlier():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, 500_000)
    counts, edges = hist_of(x)
    assert ranges.kl_range(counts, edges, 0.0, x.max()) == pytest.approx((0.0, x.max()), rel=0.01)
    y = np.append(x, [40.0])  # one outlier 40x beyond the mass
    counts, edges = hist_of(y, 4096)
    lo, hi = ranges.kl_range(counts, edges, 0.0, 40.0)
    assert lo == 0.0 and 0.9 < hi < 3.0


def test_kl_on_relu_gaussian_is_reasonable():
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(1, 1, 300_000), 0)
    counts, edges = hist_of(x)
    lo, hi = ranges.kl_range(counts, edges, 0.0, x.max())
    assert lo == 0.0 and 2.5 < hi <= x.max()


def test_methods_and_full_range_tensors():
    rng = np.random.default_rng(4)
    stats = {"a": ranges.TensorStats(512), "b": ranges.TensorStats(512)}
    for name, s in stats.items():
        x = rng.standard_t(2, 50_000)
        s.update(x.min(), x.max(), x)
    arrs = ranges.stats_to_arrays(stats)
    mx = ranges.compute_ranges(arrs, "max")
    pc = ranges.compute_ranges(arrs, "percentile", percentile=99.0, keep_full={"b"})
    assert mx["a"] == (stats["a"].min, stats["a"].max)
    assert stats["a"].min < pc["a"][0] < 0 < pc["a"][1] < stats["a"].max
    assert pc["b"] == mx["b"]
    ms = ranges.compute_ranges(arrs, "mse", levels=256, candidates=128, keep_full={"b"})
    assert stats["a"].min < ms["a"][0] < 0 < ms["a"][1] < stats["a"].max and ms["b"] == mx["b"]
    with pytest.raises(ZooError, match="calibrate method 'entropy': expected max, percentile, kl_divergence or mse"):
        ranges.compute_ranges(arrs, "entropy")


def test_quantization_mse_hand_computed():
    # two values per bin at centres 0.5 and 1.5 (bins [0,1), [1,2)); range [0, 1] with 2 levels (step 1): the
    # first bin is inside (1/12), the second 0.5 beyond the edge (0.25 + bin width^2/12)
    counts, edges = np.array([2.0, 2.0]), np.array([0.0, 1.0, 2.0])
    err = ranges.quantization_mse(counts, edges, np.array([0.0]), np.array([1.0]), levels=2)
    assert err[0] == pytest.approx((2 * (1 / 12) + 2 * (0.25 + 1 / 12)) / 4)


def test_mse_range_keeps_a_uniform_distribution_and_clips_a_heavy_tail():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, 500_000)
    counts, edges = hist_of(x)
    assert ranges.mse_range(counts, edges, 0.0, x.max()) == pytest.approx((0.0, x.max()), rel=0.01)
    y = np.abs(rng.standard_t(3, 500_000))   # heavy tail: the max lies far out
    counts, edges = hist_of(y, 4096)
    lo, hi = ranges.mse_range(counts, edges, 0.0, y.max())
    assert lo == 0.0 and hi < 0.8 * y.max()

    def measured(r):   # the error of quantizing the values themselves
        step = (r[1] - r[0]) / 255
        q = np.clip(np.round((y - r[0]) / step), 0, 255) * step + r[0]
        return float(np.mean((q - y) ** 2))
    # the histogram's estimate is the measured error, for clipping ranges and wide ones
    for r in ((0.0, 10.0), (0.0, hi), (0.0, y.max())):
        est = ranges.quantization_mse(counts.astype(float), edges, np.array([r[0]]), np.array([r[1]]))[0]
        assert est == pytest.approx(measured(r), rel=0.01)
    # and its error is the smallest of the methods'
    others = [(0.0, y.max()), ranges.percentile_range(counts, edges, 0.0, y.max(), 99.999),
              ranges.kl_range(counts, edges, 0.0, y.max())]
    assert all(measured((lo, hi)) <= measured(r) * 1.02 for r in others)


def test_balanced_selection():
    labels = [i % 10 for i in range(1000)]
    sel = calibration_split.balanced_selection(labels, 25, seed=0)
    assert sel == calibration_split.balanced_selection(labels, 25, seed=0)
    assert sel != calibration_split.balanced_selection(labels, 25, seed=1)
    per_class = np.bincount([labels[i] for i in sel], minlength=10)
    assert per_class.min() >= 2 and per_class.max() <= 3  # balanced: every class, counts differ by <= 1
    sel5 = calibration_split.balanced_selection(labels, 5, seed=0)
    assert len({labels[i] for i in sel5}) == 5  # fewer images than classes: distinct classes
    assert calibration_split.balanced_selection([0, 0, 1], 10) == [0, 1, 2]  # more asked than exist: all


def test_the_validation_split_is_class_balanced_and_disjoint_from_the_range_images():
    labels = [i % 10 for i in range(200)]
    ranges, split = calibration_split.calibration_split(labels, 100, 50, seed=0)
    assert len(ranges) == 100 and len(split) == 50 and not set(ranges) & set(split)
    assert sorted(np.bincount([labels[i] for i in split])) == [5] * 10
    assert sorted(np.bincount([labels[i] for i in ranges])) == [10] * 10
    assert calibration_split.calibration_split(labels, 100, 50, seed=0) == (ranges, split)
    assert calibration_split.split_sizes(60, 1000, 200) == (50, 10)    # too few images: shared in proportion
    assert calibration_split.split_sizes(6, 1000, 200) == (5, 1) and calibration_split.split_sizes(6, 1000, 0) == (6, 0)
    assert calibration_split.split_sizes(6, 6, 200) == (3, 3) and calibration_split.split_sizes(1, 1000, 200) == (1, 0)
    assert calibration_split.calibration_split(labels, 300, 0, seed=0) == (list(range(200)), [])


def test_read_rows_of_a_shard(tmp_path):
    arr = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    p = tmp_path / "s.npz"
    shard_io.write_shard(p, arr, list(range(5)), [f"{i}.JPEG" for i in range(5)], [])
    assert np.array_equal(shard_io.read_rows(str(p), [3, 0, 4]), arr[[3, 0, 4]])
    with pytest.raises(ZooError, match="row 5 out of range"):
        shard_io.read_rows(str(p), [5])


def test_in_graph_statistics_match_numpy():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])],
                          "g", [x], [y], value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT,
                                                                                    ["n", 64])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    names = calibrate.tensors_to_calibrate(m)
    assert names == ["x", "h", "y"]
    aug, steps = calibrate.augment(m, names, samples_per_tensor=10)
    sess = ort.InferenceSession(aug.SerializeToString(), providers=["CPUExecutionProvider"])
    data = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    outs = sess.run(None, {"x": data})
    ref = {"x": data, "h": np.maximum(data, 0), "y": -np.maximum(data, 0)}
    for i, n in enumerate(names):
        assert outs[3 * i] == ref[n].min() and outs[3 * i + 1] == ref[n].max()
        assert np.array_equal(outs[3 * i + 2], ref[n].reshape(-1)[::steps[n]])
    assert steps["x"] == 7  # smallest prime >= ceil(64 / 10)
