"""deploy/<variant>/: which build is chosen (budget, CPU requirement, speed) and what a deploy folder holds."""
from __future__ import annotations

import pytest

from effzoo.common import ZooError
from effzoo.steps.deploy import choose

BUDGET = {"min_agreement": 0.98, "max_top1_loss": 0.005, "speed_tolerance": 0.0}


def speed(x: float) -> dict:
    """A deploy-mode speed x times PyTorch eager, with a round-to-round spread of +-2%."""
    return {"vs_torch_eager": x, "vs_torch_eager_range": [0.98 * x, 1.02 * x], "images_per_s": 40 * x}


def metrics(**vs_torch) -> dict:
    res = {"fp32": {"top1": 0.88, "speed": speed(vs_torch.get("fp32", 2.5))}}
    for q in ("int8_vnni", "int8_portable", "int8_bad"):
        res[q] = {"top1": 0.878 if q != "int8_bad" else 0.86, "top1_agreement_with_fp32": 0.99,
                  "speed": speed(vs_torch.get(q, 5.0))}
    return {"variant": "v", "results": res}


BUILDS = {"fp32": {"cpu": {"requires": "avx2"}}, "int8_vnni": {"cpu": {"requires": "vnni"}},
          "int8_portable": {"cpu": {"requires": "avx2"}}, "int8_bad": {"cpu": {"requires": "avx2"}}}


def test_the_fastest_build_within_budget_that_this_cpu_runs():
    best, passed, ties = choose(metrics(int8_vnni=7.5, int8_portable=6.0, int8_bad=20.0), BUILDS, BUDGET, "vnni")
    assert best == "int8_vnni" and ties == []
    assert any(p.startswith("int8_bad: outside the accuracy budget") for p in passed)
    assert "int8_portable: 6.00x PyTorch eager (240.0 images/s), slower than int8_vnni" in passed
    # on a CPU without VNNI the vnni build is passed over, not run wrongly
    best, passed, _ = choose(metrics(int8_vnni=7.5, int8_portable=6.0), BUILDS, BUDGET, "avx512")
    assert best == "int8_portable"
    assert "int8_vnni: requires a vnni CPU; this one is avx512" in passed


def test_fp32_when_nothing_quantized_is_faster():
    assert choose(metrics(fp32=12.0), BUILDS, BUDGET, "vnni")[0] == "fp32"


def test_a_tie_within_the_noise_goes_to_the_more_accurate_build():
    m = metrics(fp32=5.0, int8_vnni=5.1, int8_portable=2.0)   # 4.9-5.1 and 5.0-5.2 overlap
    best, passed, ties = choose(m, BUILDS, BUDGET, "vnni")
    assert best == "fp32" and ties == ["int8_vnni"]
    assert "int8_vnni: 5.10x PyTorch eager (204.0 images/s), tied with fp32 on speed within the measured noise, " \
           "and not more accurate" in passed


def test_metrics_without_fp32_are_named():
    m = metrics()
    del m["results"]["fp32"]
    with pytest.raises(ZooError, match="v: no fp32 build in the metrics: it is the reference of the budget"):
        choose(m, BUILDS, BUDGET, "vnni")


def test_no_benchmarked_build_is_a_clear_error():
    m = metrics()
    for r in m["results"].values():
        del r["speed"]
    with pytest.raises(ZooError, match="v: no build is within the accuracy budget .* fp32: not benchmarked"):
        choose(m, BUILDS, BUDGET, "vnni")
