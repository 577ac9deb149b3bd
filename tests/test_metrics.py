"""Scoring: top-1/top-5 and agreement on hand-made predictions."""
from __future__ import annotations

import numpy as np
import pytest

from effzoo.common import ZooError
from effzoo.evidence import accuracy_evidence
from effzoo.steps.metrics import score


def test_score_top1_top5():
    labels = np.array([3, 1, 4, 1])
    top = np.array([[3, 0, 0, 0, 0], [0, 1, 2, 3, 4], [9, 9, 9, 9, 9], [0, 0, 0, 0, 1]])
    assert score(labels, top) == {"top1": 0.25, "top5": 0.75, "images": 4}


def test_score_empty_is_an_error():
    with pytest.raises(ZooError, match="no images to score"):
        score(np.zeros(0, int), np.zeros((0, 5), int))


def perf(torch1, torch16, ips16=100.0) -> dict:
    """A perf JSON whose build ran `torch1`/`torch16` times PyTorch eager at batch 1/16 (deploy batch 16)."""
    return {"deploy_mode": {"mode": "latency", "batch": 16, "threads": 2},
            "results": {"1": {"build": {"throughput_ips": 10.0, "speedup_vs_torch_eager": torch1}},
                        "16": {"build": {"throughput_ips": ips16, "speedup_vs_torch_eager": torch16,
                                         "speedup_vs_torch_eager_range": [torch16 * 0.95, torch16 * 1.05]}}}}


def test_the_deploy_speed_and_a_perf_without_its_baseline():
    from effzoo.steps.metrics import deploy_speed

    assert deploy_speed(perf(2.0, 3.0), "p.json") == {"mode": "latency", "batch": 16, "threads": 2,
                                                      "images_per_s": 100.0, "vs_torch_eager": 3.0,
                                                      "vs_torch_eager_range": [2.85, 3.15]}
    bare = perf(2.0, 3.0)
    del bare["results"]["16"]["build"]["speedup_vs_torch_eager"]
    with pytest.raises(ZooError, match=r"p.json: no speed over PyTorch eager at batch 16"):
        deploy_speed(bare, "p.json")


BUDGET = {"min_agreement": 0.98, "max_top1_loss": 0.005}


def race_of(variant: str, images_per_s: dict, over_fp32: dict, chosen: str, left_out: dict | None = None) -> dict:
    """A race file: raced builds with their images/s and paired ratio to fp32, and its decision."""
    builds = {q: {"images_per_s": ips, "latency_p90_ms": 1000 * 16 / ips, "speed_over_ort_fp32": over_fp32[q],
                  "speed_over_runtime_fp32": {"build": "ov_fp32" if q.startswith("ov_") else "fp32", "ratio": over_fp32[q]},
                  "kind": "int8" if "int8" in q else q.removeprefix("ov_")}
              for q, ips in images_per_s.items()}
    leader = max(images_per_s, key=images_per_s.get)
    return {"variant": variant, "objective": "batch", "batch": 16, "threads": 2, "rounds": 5, "ranked_on": "images/s",
            "builds": builds, "left_out": left_out or {}, "accuracy": {},
            "preprocessing": {"images_per_s_one_thread": 150.0},
            "cpu": {"model": "Test CPU", "kind": "avx2", "flags": ["avx2"]},
            "decision": {"chosen": chosen, "leader": leader, "pool": "certified builds", "tolerance": 0.05,
                         "builds": {q: {"speed_state": "leader" if q == leader else "slower",
                                        "speed_over_leader": [ips / images_per_s[leader]] * 3}
                                    for q, ips in images_per_s.items()}}}


def test_text_table_shows_intervals_from_the_race_and_slower_builds():
    from effzoo.steps.summary import text_table

    def res(top1, agreeing, reference=False, **more):
        return {"top1": top1, "top5": 1.0, "images": 6, "model_size_mb": 5.0, "runtime": "onnxruntime",
                "evidence": accuracy_evidence(round(6 * top1), 6, agreeing, 6 - agreeing, 0, 6, BUDGET, reference),
                **more}
    m = {"variant": "v", "params_m": 4.65, "gflops": 0.77, "input_size": [3, 224, 224], "random_weights": False,
         "weights": {"source": "pypi:x"},
         "results": {"fp32": res(5 / 6, 6, reference=True), "fp16": res(5 / 6, 6),
                     "int8": res(4 / 6, 5, split_agreement_with_fp32=0.97,
                                 accuracy_budget={"status": "cap_reached", "final_agreement": 0.97,
                                                  "split_images": 100}),
                     "ov_bf16": {"not_run": "b.json: requires amx_bf16 or avx512_bf16", "kind": "bf16",
                                 "runtime": "openvino", "model_size_mb": 5.0}}}
    race = race_of("v", {"fp32": 100.0, "fp16": 70.0, "int8": 150.0},
                   {"fp32": [1.0, 1.0, 1.0], "fp16": [0.7, 0.66, 0.74], "int8": [1.5, 1.4, 1.6]}, "int8")
    lines = text_table([m], ["fp32", "fp16", "int8", "ov_bf16"], {"v": race}).splitlines()
    assert lines[1].split()[:12] == ["v", "fp32", "onnxruntime", "0.8333", "1.0000", "100.0", "[100.0,", "100.0]",
                                     "-", "1.00", "[1.00,", "1.00]"]
    assert lines[3].split()[:14] == ["v", "int8", "onnxruntime", "0.6667", "1.0000", "83.3", "[35.9,", "99.6]",
                                     "0.970", "1.50", "[1.40,", "1.60]", "unproven", "6"]
    # a build that did not run on this CPU has a row that says so, and no figure
    assert lines[4].split()[:5] == ["v", "ov_bf16", "openvino", "not", "run"] and lines[4].split()[11] == "0"
    assert lines[5].startswith("v: deployed int8 from the certified builds; race of 5 rounds, batch objective")
    assert lines[6] == ("v: slower than the fp32 build of their runtime on this CPU (95% intervals): fp16 "
                        "(speed_over_runtime_fp32 0.70 [0.66, 0.74], over fp32)")
    assert lines[7].startswith("v: fp16 is the vendor's build for accelerators; ONNX Runtime's CPU provider runs it "
                               "slower than fp32 on every CPU kind measured")
    assert lines[8] == "v: ov_bf16 not run: b.json: requires amx_bf16 or avx512_bf16"
    assert lines[-1] == "v int8: split budget not met within the promotion cap (0.970 on 100 split images)"


def test_split_budget_notes_say_what_the_split_could_not_certify():
    from effzoo.budget import split_budget_notes

    m = {"variant": "v", "results": {
        "a": {"accuracy_budget": {"status": "certified"}},
        "b": {"accuracy_budget": {"status": "unproven", "final_agreement": 1.0, "split_images": 100,
                                  "split_min_agreement": 0.99, "agreement_lower_95": 0.963,
                                  "split_images_needed": 381}},
        "c": {"accuracy_budget": {"status": "not_checked", "why": "the validation split has 1 images, fewer than"}},
        "d": {"accuracy_budget": {"status": "speed_bound", "why": "8 promoted layers ran at 0.75x the fp32 model on "
                                  "the split (floor min_speed_over_fp32 1.0); kept 4", "final_agreement": 0.98,
                                  "final_expected_agreement": 0.9834, "split_images": 100}},
        "e": {"accuracy_budget": {"status": "cap_reached", "why": "no prefix met the budget, and promotions cut the "
                                  "split KL by 3% at most", "final_agreement": 0.99,
                                  "final_expected_agreement": 0.985, "split_images": 100}},
        "fp32": {}}}
    assert split_budget_notes([m]) == [
        "v b: split agreement 1.000 on 100 images does not certify 0.99 (95% lower bound 0.963; 381 split images "
        "would)", "v c: split budget not checked (the validation split has 1 images, fewer than)",
        "v d: promotions held back by the speed floor (8 promoted layers ran at 0.75x the fp32 model on the split "
        "(floor min_speed_over_fp32 1.0); kept 4; 0.980, expected 0.983 on 100 split images)",
        "v e: split budget not met within the promotion cap (0.990, expected 0.985 on 100 split images; no prefix "
        "met the budget, and promotions cut the split KL by 3% at most)"]


def test_throughput_axis_has_labelled_ticks_within_one_decade_and_error_bars():
    from effzoo.steps.summary import figure, plot_points

    ev = accuracy_evidence(400, 480, 500, 0, 0, 500, BUDGET, reference=True)
    m = {"variant": "v", "random_weights": False,
         "results": {q: {"top1": 0.8, "kind": "fp32", "evidence": ev} for q in ("fp32", "int8_max", "fp16")}}
    race = race_of("v", {"fp32": 96.0, "int8_max": 125.0, "fp16": 66.0},
                   {q: [1.0, 1.0, 1.0] for q in ("fp32", "int8_max", "fp16")}, "int8_max")
    points = {p["build"]: p for p in plot_points(m, race)}
    assert points["fp32"]["x"] == pytest.approx(96.0) and points["int8_max"]["deployed"] is True
    assert points["fp32"]["y_err"] == pytest.approx((100 * (0.8 - ev["top1"]["interval"][0]),
                                                     100 * (ev["top1"]["interval"][1] - 0.8)))
    fig = figure([m], {"v": race})
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    labels = [(t.get_position()[0], t.get_text()) for t in ax.get_xticklabels() if t.get_text()]
    inside = [float(text) for x, text in labels if lo <= x <= hi]
    assert len(inside) >= 3 and all(lo <= v <= hi for v in inside)


def test_a_missing_skipped_list_is_an_error_not_nothing_skipped(tmp_path):
    from effzoo.steps.metrics import read_skipped

    with pytest.raises(ZooError, match=rf"{tmp_path / 'skipped.tsv'}: file not found \(the datalist step writes it"):
        read_skipped(str(tmp_path / "skipped.tsv"))
    (tmp_path / "skipped.tsv").write_text("bad.JPEG\tcannot decode\n")
    assert read_skipped(str(tmp_path / "skipped.tsv")) == ["bad.JPEG\tcannot decode"]


def report_metrics(variant: str, random: bool = False) -> dict:
    """A metrics document with an fp32, an ONNX Runtime int8 and an OpenVINO fp32 + int8 build on 500 images."""
    def build(kind, runtime, top1, agreeing, lost, gained):
        return {"kind": kind, "runtime": runtime, "top1": top1, "top5": 0.95, "images": 500, "model_size_mb": 5.0,
                "cpu": {"target": "vnni"}, "evidence": accuracy_evidence(round(500 * top1), 475, agreeing or 500, lost,
                                                                         gained, 500, BUDGET, agreeing is None)}
    results = {"fp32": build("fp32", "onnxruntime", 0.880, None, 0, 0),
               "int8_max": build("int8", "onnxruntime", 0.878, 496, 2, 1),
               "ov_fp32": build("fp32", "openvino", 0.880, 500, 0, 0),
               "ov_int8_max": build("int8", "openvino", 0.870, 450, 10, 5)}
    return {"variant": variant, "random_weights": random, "weights": {"source": "pypi:x"}, "input_size": [3, 224, 224],
            "params_m": 4.65, "gflops": 0.77, "flops_convention": "2 x MACs", "results": results,
            "dataset": {"name": "sample", "images_scored": 500}}


def test_report_has_the_vendor_model_table_then_one_row_per_build(tmp_path):
    import csv
    import json

    from effzoo.steps import summary

    paths, races = [], []
    for v, random in (("lite0", False), ("b0", True)):
        paths.append(tmp_path / f"{v}.json")
        paths[-1].write_text(json.dumps(report_metrics(v, random)))
        races.append(tmp_path / f"{v}.race.json")
        races[-1].write_text(json.dumps(race_of(v, {"fp32": 100.0, "int8_max": 180.0, "ov_fp32": 120.0},
                                                {"fp32": [1.0, 1.0, 1.0], "int8_max": [1.8, 1.75, 1.85],
                                                 "ov_fp32": [1.2, 1.15, 1.25]}, "int8_max",
                                                {"ov_int8_max": "refuted by the accuracy evidence"})))
    out = {k: tmp_path / f"summary.{k}" for k in ("md", "html", "csv")}
    summary.main(["--metrics", *map(str, paths), "--races", *map(str, races), "--md", str(out["md"]), "--html",
                  str(out["html"]), "--csv", str(out["csv"]), "--plot", str(tmp_path / "plot.png")])
    md = out["md"].read_text().splitlines()
    first = next(i for i, ln in enumerate(md) if ln.startswith("| "))
    header = [c.strip() for c in md[first].strip("|").split("|")]
    assert len(header) == 12 and header[:7] == ["variant", "weights", "input", "params (M)", "GFLOPs",
                                                "fp32 top-1 [95%]", "fp32 top-5"]
    lite0 = [c.strip() for c in md[first + 2].strip("|").split("|")]
    assert lite0 == ["lite0", "pypi:x", "224", "4.65", "0.77", "88.0 [84.8, 90.7]", "95.0", "int8_max (onnxruntime)",
                     "87.8 [84.6, 90.5]", "99.2 [98.0, 99.8]", "180.0", "1.80 [1.75, 1.85]"]
    assert md[first + 3].startswith("| b0 | RANDOM | 224 |")
    builds = md.index("## Builds")
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in md[builds + 6:builds + 14]]
    assert [r[:2] for r in rows[:4]] == [["lite0", "fp32"], ["lite0", "int8_max"], ["lite0", "ov_fp32"],
                                         ["lite0", "ov_int8_max"]]
    assert rows[1][8:] == ["unproven", "180.0", "1.80 [1.75, 1.85]", "deployed (fastest)"]
    assert rows[3][2:] == ["openvino", "int8", "vnni", "87.0 [83.7, 89.8]", "95.0", "90.0 [87.0, 92.5]", "refuted",
                           "", "", "not raced: refuted by the accuracy evidence"]
    assert rows[0][8:] == ["certified", "100.0", "1.00 [1.00, 1.00]", "slower"]
    long = list(csv.DictReader(out["csv"].open()))
    assert len(long) == 8 and long[7]["variant"] == "b0" and long[7]["build"] == "ov_int8_max"
    assert long[7]["variant_deployed"] == "int8_max (onnxruntime)" and long[6]["vs_fp32"] == "1.20 [1.15, 1.25]"
    text = out["md"].read_text()
    assert "- lite0: deployed int8_max from the certified builds; race of 5 rounds" in text
    page = out["html"].read_text()
    assert page.count("<tr>") == 1 + 2 + 1 + 8 and "int8_max (onnxruntime)" in page and "RANDOM" in page


def test_report_without_an_fp32_build_names_it(tmp_path):
    import json

    from effzoo.steps import summary

    m = report_metrics("lite0")
    del m["results"]["fp32"]
    (tmp_path / "m.json").write_text(json.dumps(m))
    with pytest.raises(ZooError, match=r"m.json: no fp32 build, the reference of every table figure; add fp32"):
        summary.main(["--metrics", str(tmp_path / "m.json"), "--md", str(tmp_path / "s.md"), "--html",
                      str(tmp_path / "s.html"), "--csv", str(tmp_path / "s.csv"), "--plot", str(tmp_path / "p.png")])
    assert not (tmp_path / "s.md").exists()
