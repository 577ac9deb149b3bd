"""Which build is deployed: exact accuracy bounds, their three states, the tie rule on paired timings, the CPU
filter, and one decision for the report and deploy/."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from effzoo import evidence
from effzoo.common import ZooError
from effzoo.decision import decide, race_candidates
from effzoo.evidence import (
    accuracy_evidence,
    clopper_pearson,
    images_needed,
    loss_interval,
    ratio_interval,
    speed_state,
    t_quantile,
)

BUDGET = {"min_agreement": 0.98, "max_top1_loss": 0.005}


def test_clopper_pearson_matches_known_values():
    # reference values: scipy.stats.beta.ppf(0.025, k, n - k + 1) and beta.ppf(0.975, k + 1, n - k)
    assert clopper_pearson(5, 6) == pytest.approx((0.358765421, 0.995789255), abs=1e-8)
    assert clopper_pearson(496, 500) == pytest.approx((0.979644367, 0.997816092), abs=1e-8)
    assert clopper_pearson(0, 500) == pytest.approx((0.0, 0.007350610), abs=1e-8)
    assert clopper_pearson(500, 500) == pytest.approx((0.992649390, 1.0), abs=1e-8)
    assert clopper_pearson(49500, 50000) == pytest.approx((0.989088826, 0.990853590), abs=1e-8)
    assert t_quantile(0.975, 4) == pytest.approx(2.776445105, abs=1e-8)


def test_the_paired_loss_interval_from_the_discordant_images():
    # no discordant image in 500: the 97.5% bound of the discordant share, either way
    lo, hi = loss_interval(0, 0, 500)
    assert hi == pytest.approx(1 - 0.0125 ** (1 / 500), abs=1e-9) and lo == pytest.approx(-hi)
    # 500 lost and 480 gained in 50,000: a loss of 0.04 pt, the interval around it far tighter than the lost share
    lo, hi = loss_interval(500, 480, 50000)
    assert lo < 0.0004 < hi and hi - lo < 0.0035 and hi < clopper_pearson(500, 50000)[1]
    # at the default budget, no discordant image certifies a 0.5 pt loss from 875 images on (and agreement 98% from
    # 183): nothing but fp32 is certified on the 500-image sample
    assert images_needed(6, 0, 0, 6, BUDGET) == 875
    assert loss_interval(0, 0, 874)[1] > 0.005 >= loss_interval(0, 0, 875)[1]


def test_the_three_states_and_the_images_that_would_certify():
    certified = accuracy_evidence(44000, 48000, 49500, 150, 120, 50000, BUDGET)
    assert certified["state"] == "certified" and "images_needed" not in certified
    refuted = accuracy_evidence(400, 480, 450, 30, 5, 500, BUDGET)   # 90% agreement: its upper bound is 92.5%
    assert refuted["state"] == "refuted" and refuted["agreement"]["interval"][1] < 0.98
    lossy = accuracy_evidence(4000, 4800, 4940, 60, 0, 5000, BUDGET)   # agreement 98.8%, but 60 lost and none gained
    assert lossy["agreement"]["interval"][1] >= 0.98 and lossy["top1_loss"]["interval"][0] > 0.005
    assert lossy["state"] == "refuted"
    small = accuracy_evidence(5, 6, 5, 1, 0, 6, BUDGET)
    assert small["state"] == "unproven" and small["images_needed"] is None   # 5/6 agreement never certifies 98%
    assert small["agreement"]["interval"] == pytest.approx([0.358765421, 0.995789255], abs=1e-8)
    assert evidence.not_certified_note(small).startswith("accuracy not certified: 6 images scored, at the observed "
                                                         "agreement (0.833)")
    sample = accuracy_evidence(440, 490, 496, 2, 1, 500, BUDGET)
    needed = sample["images_needed"]
    assert sample["state"] == "unproven" and needed > 500
    assert evidence.not_certified_note(sample) == f"accuracy not certified: 500 images scored, about {needed} needed"
    for n, state in ((needed, "certified"), (needed - 1, "unproven")):   # at the observed rates
        s = n / 500
        assert evidence.state(clopper_pearson(496 * s, n), loss_interval(2 * s, 1 * s, n), BUDGET) == state


def rounds(ratio: float, noise: float, n: int, seed: int) -> tuple[list[float], list[float]]:
    """(leader, build) per-round images/s: the machine drifts by +-20% between rounds (both feel it), and each
    build's turn adds its own multiplicative noise."""
    rng = np.random.default_rng(seed)
    drift = 100 * np.exp(rng.normal(0, 0.2, n))
    leader = drift * np.exp(rng.normal(0, 0.01, n))
    return list(leader), list(drift * ratio * np.exp(rng.normal(0, noise, n)))


def test_a_noisy_reference_never_ties_with_a_build_1_5x_faster():
    for seed in range(20):
        fast, fp32 = rounds(1 / 1.5, 0.3, 30, seed)
        for n in range(2, 31):
            r = ratio_interval([b / a for a, b in zip(fast[:n], fp32[:n])], looks=3)
            assert speed_state(r[1:], 0.05) != "tied", (seed, n, r)


def test_more_rounds_never_create_a_tie_and_resolve_what_they_can():
    for seed in range(20):
        leader, slower = rounds(0.90, 0.03, 40, seed)    # 10% slower: outside a 5% tolerance
        states = [speed_state(ratio_interval([b / a for a, b in zip(leader[:n], slower[:n])], 3)[1:], 0.05)
                  for n in range(2, 41)]
        assert "tied" not in states and states[-1] == "slower", (seed, states)
        leader, close = rounds(0.995, 0.01, 40, seed)   # within 0.5%: tied once the interval is narrow enough
        assert speed_state(ratio_interval([b / a for a, b in zip(leader, close)], 3)[1:], 0.05) == "tied"
    assert ratio_interval([0.9], 3)[1:] == (0.0, math.inf)   # one round says nothing: unresolved
    assert speed_state((0.0, math.inf), 0.05) == "unresolved"


def ev(agreeing: int, n: int = 6, lost: int = 0) -> dict:
    return accuracy_evidence(agreeing, n, agreeing, lost, 0, n, BUDGET)


def ref(n: int = 6) -> dict:
    """The fp32 build's evidence against itself."""
    return accuracy_evidence(n, n, n, 0, 0, n, BUDGET, reference=True)


def test_only_fp32_certified_takes_the_fastest_unrefuted_build_and_says_so():
    e = {"fp32": ref(), "int8": ev(5, lost=1), "ov_int8": ev(6)}
    ov_int8, fp32 = rounds(1 / 1.6, 0.01, 5, 0)
    int8 = list(np.asarray(fp32) * 1.3)
    d = decide(e, {"fp32": fp32, "int8": int8, "ov_int8": ov_int8}, ["fp32", "int8", "ov_int8"], 0.05, "not_refuted",
               3)
    assert d["chosen"] == d["leader"] == "ov_int8" and d["pool"].startswith("builds the accuracy evidence does not")
    assert d["note"] == "accuracy not certified: 6 images scored, about 875 needed"
    assert d["builds"]["fp32"]["speed_state"] == d["builds"]["int8"]["speed_state"] == "slower"
    assert d["passed_over"]["int8"].startswith("slower than ov_int8 (0.80")
    # `require: certified`: fp32, the only certified build
    d = decide(e, {"fp32": fp32, "int8": int8, "ov_int8": ov_int8}, ["fp32", "int8", "ov_int8"], 0.05, "certified", 3)
    assert d["chosen"] == "fp32" and "note" not in d
    with pytest.raises(ZooError, match=r"no raced build is in the pool \(certified builds\): race fp32"):
        decide(e, {"int8": int8, "ov_int8": ov_int8}, ["fp32", "int8", "ov_int8"], 0.05, "certified", 3)


def test_a_tie_goes_to_stronger_evidence_and_a_certified_pool_leaves_unproven_builds_out():
    e = {"fp32": ref(), "int8": ev(6)}
    leader, same = rounds(0.98, 0.005, 9, 1)   # int8 leads by 2%; fp32 is confidently within 5%
    d = decide(e, {"int8": leader, "fp32": same}, ["fp32", "int8"], 0.05, "not_refuted", 3)
    assert d["leader"] == "int8" and d["builds"]["fp32"]["speed_state"] == "tied" and d["chosen"] == "fp32"
    assert d["passed_over"]["int8"].startswith("fastest, but fp32 is tied with it within 5%")
    big = {"fp32": accuracy_evidence(44000, 48000, 50000, 0, 0, 50000, BUDGET, reference=True),
           "int8_a": accuracy_evidence(44000, 48000, 49500, 150, 120, 50000, BUDGET),     # certified
           "int8_b": accuracy_evidence(44000, 48000, 49020, 250, 200, 50000, BUDGET)}     # 98.04%: unproven
    assert [big[q]["state"] for q in big] == ["certified", "certified", "unproven"]
    a, fp32 = rounds(1 / 1.4, 0.01, 5, 2)
    b = list(np.asarray(a) * 1.3)
    d = decide(big, {"fp32": fp32, "int8_a": a, "int8_b": b}, list(big), 0.05, "not_refuted", 3)
    assert d["chosen"] == d["leader"] == "int8_a" and d["pool"] == "certified builds"
    assert d["builds"]["int8_b"]["in_pool"] is False and "note" not in d
    assert d["passed_over"]["int8_b"].startswith("unproven, while certified builds exist")


def test_the_race_leaves_out_refuted_builds_and_those_its_own_cpu_cannot_run():
    e = {"fp32": ref(), "int8_vnni": ev(6), "int8_bad": accuracy_evidence(400, 480, 450, 30, 5, 500, BUDGET),
         "ov_bf16": ev(6)}
    cpus = {"fp32": {"requires": "any"}, "int8_vnni": {"requires": "vnni"}, "int8_bad": {"requires": "any"},
            "ov_bf16": {"requires": "any", "requires_flags": ["amx_bf16", "avx512_bf16"]}}
    cands, out = race_candidates(e, cpus, "avx2", {"avx2", "fma"}, list(e))
    assert cands == ["fp32"]
    assert out["int8_vnni"] == "requires a vnni CPU; the race ran on a avx2 CPU"
    assert out["int8_bad"] == ("refuted by the accuracy evidence: agreement 90.0 [87.0, 92.5] %, top-1 loss 5.00 "
                               "[1.63, 9.19] pt on 500 images")
    assert out["ov_bf16"] == "requires amx_bf16 or avx512_bf16, which the race's CPU lacks"
    vnni = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}
    assert race_candidates(e, cpus, "vnni", vnni, list(e))[0] == ["fp32", "int8_vnni"]   # VNNI without bf16
    assert race_candidates(e, cpus, "vnni", vnni | {"avx512_bf16"}, list(e))[0] == ["fp32", "int8_vnni", "ov_bf16"]


def race_doc(chosen_ips: dict, evidence_of: dict, cpu: str = "vnni") -> dict:
    """A race file as the race step writes it, from per-round images/s."""
    order = list(chosen_ips)
    d = decide(evidence_of, chosen_ips, order, 0.05, "not_refuted", 3)
    builds = {q: {"images_per_s": float(np.median(r)), "latency_p90_ms": 10.0, "runtime": {"package": "onnxruntime",
                                                                                          "version": "1"},
                  "speed_over_ort_fp32": [1.0, 1.0, 1.0], "kind": "fp32" if q == "fp32" else "int8"}
              for q, r in chosen_ips.items()}
    return {"variant": "v", "objective": "batch", "batch": 16, "threads": 2, "rounds": 5, "ranked_on": "images/s",
            "builds": builds, "decision": d, "left_out": {}, "accuracy": evidence_of,
            "preprocessing": {"images_per_s_one_thread": 150.0, "path": "exact"},
            "cpu": {"model": "Test CPU", "kind": cpu, "kernel_isa": "avx512_vnni", "flags": ["avx2"], "cores": 2}}


def test_the_report_and_deploy_name_the_same_build(tmp_path):
    from effzoo.common import file_record
    from effzoo.steps import deploy, summary

    e = {"fp32": ref(), "int8": ev(5, lost=1), "ov_int8": ev(6)}
    ov_int8, fp32 = rounds(1 / 1.6, 0.01, 5, 3)
    race = race_doc({"fp32": fp32, "int8": list(np.asarray(fp32) * 1.3), "ov_int8": ov_int8}, e)
    builds, jsons = {}, {}
    for q in e:
        folder = tmp_path / q
        folder.mkdir()
        (folder / "model.onnx").write_bytes(q.encode())
        builds[q] = {"files": {"model.onnx": file_record(folder / "model.onnx")}, "model": {"path": "model.onnx"},
                     "options": {"runtime": "onnxruntime"}, "kind": "int8", "cpu": {"requires": "any"},
                     "input": {}, "preprocess": {}, "weights": {}, "tag": "t"}
        jsons[q] = str(folder / "build.json")
    results = {q: {"top1": 0.8, "top5": 1.0, "images": 6, "runtime": "onnxruntime", "kind": "int8",
                   "cpu": {"target": "avx2"}, "evidence": e[q]} for q in e}
    metrics = {"variant": "v", "dataset": {"name": "demo", "datalist": "npz/demo/224-r256-bicubic/datalist.tsv",
                                           "images_scored": 6},
               "results": results, "random_weights": False, "weights": {"source": "pypi:x"},
               "input_size": [3, 224, 224], "params_m": 4.65, "gflops": 0.77}
    doc = deploy.deploy("v", race, metrics, builds, jsons, ["a"], tmp_path / "deploy/v")
    row = summary.model_rows([metrics], {"v": race})[0]
    assert doc["quant"] == "ov_int8" and row["deployed"] == "ov_int8 (onnxruntime)"
    assert doc["accuracy"]["note"] == "accuracy not certified: 6 images scored, about 875 needed"
    assert (tmp_path / "deploy/v/model.onnx").read_bytes() == b"ov_int8"
    # the CPU the decision rests on is the race's, recorded in model.json, not the machine that ran deploy
    assert doc["speed"]["measured_on"]["kind"] == "vnni"
    # accuracy measured with fast preprocessing is not what effzoo.load runs: not deployed, with the reason
    metrics["dataset"]["datalist"] = "npz/demo/224-r256-bicubic-fast/datalist.tsv"
    with pytest.raises(ZooError, match="v: its accuracy was measured with preprocessing.fast, which effzoo.load"):
        deploy.deploy("v", race, metrics, builds, jsons, ["a"], tmp_path / "deploy/w")
    json.dumps(doc)   # model.json is plain JSON


def test_a_race_over_memory_keeps_fp32_and_the_fastest_by_their_own_benchmark():
    from effzoo.steps.race import within_memory

    own = {"fp32": 100.0, "fp16": 60.0, "int8": 150.0, "ov_int8": 210.0, "ov_fp32": 90.0}
    results = {q: {"speed": {"images_per_s": ips}} for q, ips in own.items()}
    kept, out = within_memory(list(own), {}, results, 3)
    assert kept == ["fp32", "int8", "ov_int8"]
    assert out["fp16"] == ("not among the 3 builds the race has memory for (deploy.race.max_builds): 60.0 images/s "
                           "in its own benchmark")
    assert within_memory(list(own), {}, results, None) == (list(own), {})


def test_the_race_is_sized_by_every_build_open_at_once():
    from effzoo import cost

    m = cost.load()
    kinds = ["onnxruntime-fp32", "onnxruntime-int8", "openvino-int8"]
    seconds, peak = cost.race_seconds(m, "efficientnet_b0", 224, kinds, 2, 736, 16)
    parts = [m.stage("predict", "efficientnet_b0", 224, k, 16) for k in kinds]
    assert peak == pytest.approx(sum(c.peak_mb for c, _ in parts))
    assert seconds == pytest.approx(sum(m.seconds(c, p, 736, 2) for c, p in parts))
    two = cost.race_seconds(m, "efficientnet_b0", 224, kinds, 2, 736, 16, max_builds=2)[1]
    assert two == pytest.approx(sum(sorted((c.peak_mb for c, _ in parts), reverse=True)[:2]))


def test_int8_that_does_not_pay_on_this_cpu_is_said_by_the_race_the_report_and_deploy(tmp_path):
    from effzoo.steps import race, summary

    def raced(package, fp32, ratio):
        return {"runtime": {"package": package}, "speed_over_runtime_fp32": {"build": fp32, "ratio": ratio}}
    timed = {"fp32": raced("onnxruntime", "fp32", [1.0, 1.0, 1.0]),
             "int8_max": raced("onnxruntime", "fp32", [1.12, 1.05, 1.19]),
             "int8_kl": raced("onnxruntime", "fp32", [1.25, 1.2, 1.31]),   # its interval reaches the floor
             "ov_fp32": raced("openvino", "ov_fp32", [1.0, 1.0, 1.0]),
             "ov_int8": raced("openvino", "ov_fp32", [1.6, 1.5, 1.7])}
    builds = {q: {"kind": "int8", "options": {"min_speed_over_fp32": 1.3}} if "int8" in q
              else {"kind": "fp32", "options": {}} for q in timed}
    cpu = {"kind": "avx2", "kernel_isa": "avx2", "flags": ["avx2"]}
    payoff = race.int8_payoff(timed, builds, cpu)
    assert payoff["openvino"] == {"fp32": "ov_fp32", "pays": True, "builds": {
        "ov_int8": {"speed_over_runtime_fp32": [1.6, 1.5, 1.7], "floor": 1.3, "below_floor": False}}}
    assert payoff["onnxruntime"]["pays"] is False
    assert payoff["onnxruntime"]["statement"] == (
        "ONNX Runtime int8 pays only in part on this CPU (avx2, avx2 kernels; flags avx2): int8_max 1.12x [1.05, "
        "1.19] fp32, below the 1.3x floor (min_speed_over_fp32; 95% intervals of this race)")
    del timed["int8_kl"]
    payoff = race.int8_payoff(timed, builds, cpu)
    assert payoff["onnxruntime"]["statement"].startswith("ONNX Runtime int8 does not pay on this CPU (avx2, ")
    # the report's notes and the deploy folder's model.json (effzoo info) carry the statement
    e = {"fp32": ref(), "int8_max": ev(6)}
    doc = race_doc({"fp32": [100.0] * 5, "int8_max": [110.0] * 5}, e, cpu="avx2")
    doc["int8_payoff"] = payoff
    assert f"v: {payoff['onnxruntime']['statement']}" in summary.race_notes({"v": doc})
    assert not any("OpenVINO int8" in n for n in summary.race_notes({"v": doc}))
