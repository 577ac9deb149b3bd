"""deploy/<variant>/: which build is chosen (budget, CPU requirement, speed) and what a deploy folder holds."""
from __future__ import annotations

import pytest

from effzoo.common import ZooError
from effzoo.steps.deploy import choose

BUDGET = {"min_agreement": 0.98, "max_top1_loss": 0.005}


def metrics(**ips) -> dict:
    res = {"fp32": {"top1": 0.88, "best_throughput_ips": ips.get("fp32", 100.0)}}
    for q in ("int8_vnni", "int8_portable", "int8_bad"):
        res[q] = {"top1": 0.878 if q != "int8_bad" else 0.86, "top1_agreement_with_fp32": 0.99,
                  "best_throughput_ips": ips.get(q, 200.0)}
    return {"variant": "v", "results": res}


BUILDS = {"fp32": {"cpu": {"requires": "avx2"}}, "int8_vnni": {"cpu": {"requires": "vnni"}},
          "int8_portable": {"cpu": {"requires": "avx2"}}, "int8_bad": {"cpu": {"requires": "avx2"}}}


def test_the_fastest_build_within_budget_that_this_cpu_runs():
    best, passed = choose(metrics(int8_vnni=300.0, int8_portable=250.0, int8_bad=900.0), BUILDS, BUDGET, "vnni")
    assert best == "int8_vnni"
    assert any(p.startswith("int8_bad: outside the accuracy budget") for p in passed)
    # on a CPU without VNNI the vnni build is passed over, not run wrongly
    best, passed = choose(metrics(int8_vnni=300.0, int8_portable=250.0), BUILDS, BUDGET, "avx512")
    assert best == "int8_portable"
    assert "int8_vnni: requires a vnni CPU; this one is avx512" in passed


def test_fp32_when_nothing_quantized_is_faster():
    assert choose(metrics(fp32=500.0), BUILDS, BUDGET, "vnni")[0] == "fp32"


def test_no_benchmarked_build_is_a_clear_error():
    m = metrics()
    for r in m["results"].values():
        r["best_throughput_ips"] = None
    with pytest.raises(ZooError, match="v: no build is within the accuracy budget .* fp32: not benchmarked"):
        choose(m, BUILDS, BUDGET, "vnni")
