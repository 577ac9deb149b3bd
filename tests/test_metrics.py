"""Scoring: top-1/top-5 and agreement on hand-made predictions."""
from __future__ import annotations

import numpy as np
import pytest

from metrics import score
from zoo_common import ZooError


def test_score_top1_top5():
    labels = np.array([3, 1, 4, 1])
    top = np.array([[3, 0, 0, 0, 0], [0, 1, 2, 3, 4], [9, 9, 9, 9, 9], [0, 0, 0, 0, 1]])
    assert score(labels, top) == {"top1": 0.25, "top5": 0.75, "images": 4}


def test_score_empty_is_an_error():
    with pytest.raises(ZooError):
        score(np.zeros(0, int), np.zeros((0, 5), int))


def test_fastest_build_needs_agreement_and_slow_builds_are_listed():
    from summary import fastest_build, slower_than_fp32

    res = {"fp32": {"best_throughput_ips": 100.0},
           "int8_a": {"best_throughput_ips": 300.0, "top1_agreement_with_fp32": 0.96, "speedup_vs_fp32": 2.9},
           "int8_b": {"best_throughput_ips": 150.0, "top1_agreement_with_fp32": 0.98, "speedup_vs_fp32": 1.4},
           "fp16": {"best_throughput_ips": 60.0, "top1_agreement_with_fp32": 1.0, "speedup_vs_fp32": 0.6}}
    assert fastest_build(res) == ("int8_b", 150.0)
    assert fastest_build({"fp32": {"best_throughput_ips": None}}) is None
    assert slower_than_fp32([{"variant": "v", "results": res}]) == ["v fp16 (0.60x)"]
