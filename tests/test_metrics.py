"""Scoring: top-1/top-5 and agreement on hand-made predictions."""
from __future__ import annotations

import numpy as np
import pytest

from effzoo.common import ZooError
from effzoo.steps.metrics import score, speed_vs


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


def test_speed_against_fp32_is_the_ratio_of_speeds_over_pytorch():
    # the int8 job ran on a machine 30% slower than the fp32 job (images/s 70 against 100): its ratio over the
    # PyTorch turns timed beside it (3.6x against 3.0x) says it is 1.2x fp32, whatever the drift
    s = speed_vs(perf(2.5, 3.6, ips16=70.0), perf(2.0, 3.0, ips16=100.0), ("q.json", "fp32.json"))
    assert s == {"speedup_vs_fp32": 1.2, "speedup_vs_fp32_batch": 16,
                 "speedup_vs_fp32_per_batch": {"1": 1.25, "16": 1.2}, "faster_than_fp32": True}
    assert speed_vs(perf(1.5, 2.7), perf(2.0, 3.0), ("q.json", "f.json"))["faster_than_fp32"] is False


def test_the_deploy_speed_and_a_perf_without_its_baseline():
    from effzoo.steps.metrics import deploy_speed

    assert deploy_speed(perf(2.0, 3.0), "p.json") == {"mode": "latency", "batch": 16, "threads": 2,
                                                      "images_per_s": 100.0, "vs_torch_eager": 3.0,
                                                      "vs_torch_eager_range": [2.85, 3.15]}
    bare = perf(2.0, 3.0)
    del bare["results"]["16"]["build"]["speedup_vs_torch_eager"]
    with pytest.raises(ZooError, match=r"p.json: no speed over PyTorch eager at batch 16"):
        deploy_speed(bare, "p.json")


def test_text_table_recommends_fp32_over_a_slower_build():
    from effzoo.steps.summary import text_table

    m = {"variant": "v", "params_m": 4.65, "gflops": 0.77, "input_size": [3, 224, 224], "random_weights": False,
         "weights": {"source": "pypi:x"},
         "results": {"fp32": {"top1": 0.9, "top5": 1.0, "images": 6, "model_size_mb": 18.7},
                     "fp16": {"top1": 0.9, "top5": 1.0, "images": 6, "model_size_mb": 9.5,
                              "top1_agreement_with_fp32": 1.0, "speedup_vs_fp32": 0.89, "runtime": "onnxruntime"},
                     "int8": {"top1": 0.8, "top5": 1.0, "images": 6, "model_size_mb": 5.2, "runtime": "onnxruntime",
                              "top1_agreement_with_fp32": 0.8, "split_agreement_with_fp32": 0.97,
                              "speedup_vs_fp32": 1.0, "accuracy_budget": {"status": "cap_reached",
                                                                          "final_agreement": 0.97, "split_images": 100}}}}
    lines = text_table([m], ["fp32", "fp16", "int8"]).splitlines()
    assert lines[2].split()[:8] == ["v", "fp16", "onnxruntime", "0.9000", "1.0000", "1.000", "-", "0.89x"]
    assert lines[3].split()[:8] == ["v", "int8", "onnxruntime", "0.8000", "1.0000", "0.800", "0.970", "1.00x"]
    assert lines[-2] == ("not faster than fp32 on its runtime and this CPU (fp32 is recommended over it): "
                         "v fp16 (0.89x), v int8 (1.00x)")
    assert lines[-1] == "v int8: split budget not met within the promotion cap (0.970 on 100 split images)"


def test_split_budget_notes_say_what_the_split_could_not_certify():
    from effzoo.budget import split_budget_notes

    m = {"variant": "v", "results": {
        "a": {"accuracy_budget": {"status": "met"}},
        "b": {"accuracy_budget": {"status": "not_certified", "final_agreement": 1.0, "split_images": 100,
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


def test_throughput_axis_has_labelled_ticks_within_one_decade():
    from effzoo.steps.summary import figure

    m = {"variant": "v", "random_weights": False,
         "results": {q: {"best_throughput_ips": ips, "top1": 0.8} for q, ips in
                     (("fp32", 96.0), ("int8_max", 125.0), ("fp16", 66.0))}}
    fig = figure([m])
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    labels = [(t.get_position()[0], t.get_text()) for t in ax.get_xticklabels() if t.get_text()]
    inside = [float(text) for x, text in labels if lo <= x <= hi]
    assert len(inside) >= 3 and all(lo <= v <= hi for v in inside)


def speed(x: float, spread: float = 0.02) -> dict:
    return {"vs_torch_eager": x, "vs_torch_eager_range": [x - spread, x + spread], "images_per_s": 40.0 * x}


def test_fastest_build_keeps_the_accuracy_budget_and_slow_builds_are_listed():
    from effzoo.budget import fastest_build, slower_than_fp32

    budget = {"min_agreement": 0.98, "max_top1_loss": 0.005}
    res = {"fp32": {"speed": speed(2.5), "top1": 0.880},
           "int8_a": {"speed": speed(7.5), "top1": 0.880, "top1_agreement_with_fp32": 0.97,
                      "speedup_vs_fp32": 2.9},                                   # agreement below 98%
           "int8_b": {"speed": speed(6.0), "top1": 0.874, "top1_agreement_with_fp32": 0.99,
                      "speedup_vs_fp32": 2.5},                                   # loses 0.6 pt
           "ov_fp32": {"speed": speed(2.4), "top1": 0.880, "top1_agreement_with_fp32": 1.0, "kind": "fp32",
                       "speedup_vs_fp32": 0.99},                                  # OpenVINO's own reference
           "ov_int8": {"speed": speed(3.6), "top1": 0.878, "top1_agreement_with_fp32": 0.985,
                       "speedup_vs_fp32": 1.4, "runtime_fp32": "ov_fp32", "speedup_vs_runtime_fp32": 0.95,
                       "accuracy_budget": {"promoted_layers": 17, "promoted_macs_fraction": 0.248}},
           "fp16": {"speed": speed(1.5), "top1": 0.880, "top1_agreement_with_fp32": 1.0,
                    "speedup_vs_fp32": 0.6},
           "int8_c": {"speed": speed(2.2), "top1": 0.880, "top1_agreement_with_fp32": 1.0, "speedup_vs_fp32": 0.88,
                      "accuracy_budget": {"promoted_layers": 0, "slower_than_fp32": "0.91x the fp32 model on the "
                                          "split with 0 promoted layers"}}}
    assert fastest_build(res, budget) == ("ov_int8", [])
    assert fastest_build({"fp32": {"top1": 0.9}}, budget) is None   # nothing benchmarked
    assert slower_than_fp32([{"variant": "v", "results": res}]) == [
        "v ov_int8 (0.95x; 17 layers promoted, 25% of the MACs)", "v fp16 (0.60x)",
        "v int8_c (0.88x; the build measured 0.91x the fp32 model on the split with 0 promoted layers)"]


def test_builds_within_each_others_noise_are_ties_broken_by_accuracy():
    from effzoo.budget import pick_fastest

    res = {"fp32": {"speed": speed(2.5), "top1": 0.880},
           "int8_a": {"speed": speed(5.05, 0.2), "top1": 0.878, "top1_agreement_with_fp32": 0.985},
           "int8_b": {"speed": speed(4.90, 0.2), "top1": 0.880, "top1_agreement_with_fp32": 0.995},
           "int8_c": {"speed": speed(4.40, 0.2), "top1": 0.880, "top1_agreement_with_fp32": 1.0}}
    # a and b overlap (4.85-5.25 and 4.70-5.10): a tie that the more accurate b wins; c (4.20-4.60) is slower
    assert pick_fastest(res, list(res)) == ("int8_b", ["int8_a"])
    res["int8_a"]["speed"] = speed(5.6, 0.2)   # now clear of b's range: the faster a wins outright
    assert pick_fastest(res, list(res)) == ("int8_a", [])
    # within a 15% tolerance (the noise between benchmark jobs) b (4.90 x 1.15 >= 5.6) ties again and wins on
    # accuracy; c (4.40) ties only within 30%, and then the most accurate, c, wins
    assert pick_fastest(res, list(res), 0.15) == ("int8_b", ["int8_a"])
    assert pick_fastest(res, list(res), 0.30) == ("int8_c", ["int8_a", "int8_b"])
    # equal accuracy: the earlier mode in run_quant order, whatever the noise made faster
    for q in ("int8_a", "int8_b", "int8_c"):
        res[q]["top1_agreement_with_fp32"], res[q]["top1"] = 1.0, 0.88
    assert pick_fastest(res, ["int8_c", "int8_b", "int8_a"], 0.30)[0] == "int8_c"
    assert pick_fastest(res, ["int8_b", "int8_c", "int8_a"], 0.30)[0] == "int8_b"


def test_a_missing_skipped_list_is_an_error_not_nothing_skipped(tmp_path):
    from effzoo.steps.metrics import read_skipped

    with pytest.raises(ZooError, match=rf"{tmp_path / 'skipped.tsv'}: file not found \(the datalist step writes it"):
        read_skipped(str(tmp_path / "skipped.tsv"))
    (tmp_path / "skipped.tsv").write_text("bad.JPEG\tcannot decode\n")
    assert read_skipped(str(tmp_path / "skipped.tsv")) == ["bad.JPEG\tcannot decode"]


def report_metrics(variant: str, random: bool = False) -> dict:
    """A metrics document with an fp32, an ONNX Runtime int8 and an OpenVINO fp32 + int8 build."""
    def build(kind, runtime, top1, agree, ips, torch_x, **ratios):
        return {"kind": kind, "runtime": runtime, "top1": top1, "top5": 0.95, "images": 500,
                "cpu": {"target": "vnni"}, "top1_agreement_with_fp32": agree, "best_throughput_ips": ips * 1.1,
                "speed": {"mode": "latency", "batch": 16, "threads": 2, "images_per_s": ips,
                          "vs_torch_eager": torch_x, "vs_torch_eager_range": [torch_x * 0.98, torch_x * 1.02]},
                "model_size_mb": 5.0, **ratios}
    results = {"fp32": build("fp32", "onnxruntime", 0.880, None, 100.0, 1.5),
               "int8_max": build("int8", "onnxruntime", 0.878, 0.99, 180.0, 2.7, speedup_vs_fp32=1.8),
               "ov_fp32": build("fp32", "openvino", 0.880, 1.0, 120.0, 1.8, speedup_vs_fp32=1.2),
               "ov_int8_max": build("int8", "openvino", 0.870, 0.97, 400.0, 6.0, speedup_vs_fp32=4.0,
                                    runtime_fp32="ov_fp32", speedup_vs_runtime_fp32=3.33)}
    del results["fp32"]["top1_agreement_with_fp32"]
    return {"variant": variant, "random_weights": random, "weights": {"source": "pypi:x"}, "input_size": [3, 224, 224],
            "params_m": 4.65, "gflops": 0.77, "flops_convention": "2 x MACs", "results": results,
            "dataset": {"name": "sample", "images_scored": 500}}


def test_report_has_the_vendor_model_table_then_one_row_per_build(tmp_path):
    import csv
    import json

    from effzoo.steps import summary

    paths = []
    for v, random in (("lite0", False), ("b0", True)):
        paths.append(tmp_path / f"{v}.json")
        paths[-1].write_text(json.dumps(report_metrics(v, random)))
    out = {k: tmp_path / f"summary.{k}" for k in ("md", "html", "csv")}
    summary.main(["--metrics", *map(str, paths), "--md", str(out["md"]), "--html", str(out["html"]), "--csv",
                  str(out["csv"]), "--plot", str(tmp_path / "plot.png"), "--min-agreement", "0.98",
                  "--max-top1-loss", "0.005", "--speed-tolerance", "0.15"])
    md = out["md"].read_text().splitlines()
    first = next(i for i, ln in enumerate(md) if ln.startswith("| "))
    header = [c.strip() for c in md[first].strip("|").split("|")]
    assert len(header) == 12 and header[:7] == ["variant", "weights", "input", "params (M)", "GFLOPs", "fp32 top-1",
                                                "fp32 top-5"]
    lite0 = [c.strip() for c in md[first + 2].strip("|").split("|")]
    # ov_int8_max is fastest but outside the budget (97% agreement, 1 pt loss): int8_max is the fastest within it
    assert lite0 == ["lite0", "pypi:x", "224", "4.65", "0.77", "88.0", "95.0", "int8_max (onnxruntime)", "87.8",
                     "99.0", "180.0", "2.7"]
    assert md[first + 3].startswith("| b0 | RANDOM | 224 |")
    builds = md.index("## Builds")
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in md[builds + 6:builds + 14]]
    assert [r[:2] for r in rows[:4]] == [["lite0", "fp32"], ["lite0", "int8_max"], ["lite0", "ov_fp32"],
                                         ["lite0", "ov_int8_max"]]
    assert rows[3][2:] == ["openvino", "int8", "vnni", "87.0", "95.0", "97.0", "400.0", "3.33", "no"]
    assert rows[0][-3:] == ["100.0", "1.0", "yes"] and rows[2][-2] == "1.0"   # each runtime's fp32 is its own 1.0x
    long = list(csv.DictReader(out["csv"].open()))
    assert len(long) == 8 and long[7]["variant"] == "b0" and long[7]["build"] == "ov_int8_max"
    assert long[7]["variant_fastest_build"] == "int8_max (onnxruntime)" and long[7]["vs_fp32"] == "3.33"
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
                      str(tmp_path / "s.html"), "--csv", str(tmp_path / "s.csv"), "--plot", str(tmp_path / "p.png"),
                      "--min-agreement", "0.98", "--max-top1-loss", "0.005", "--speed-tolerance", "0.15"])
    assert not (tmp_path / "s.md").exists()
