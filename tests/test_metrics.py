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


def test_speed_against_fp32_comes_from_the_perf_files():
    def perf(ips1, ips16):
        return {"results": {"1": {"build": {"throughput_ips": ips1}},
                            "16": {"build": {"throughput_ips": ips16}}}}
    s = speed_vs(perf(50.0, 240.0), perf(40.0, 200.0))
    assert s == {"speedup_vs_fp32": 1.2, "speedup_vs_fp32_batch": 16,
                 "speedup_vs_fp32_per_batch": {"1": 1.25, "16": 1.2}, "faster_than_fp32": True}
    assert speed_vs(perf(30.0, 180.0), perf(40.0, 200.0))["faster_than_fp32"] is False


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
    assert lines[-1] == "int8 accuracy budget not met within the promotion cap: v int8 (0.970 on 100 split images)"


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


def test_fastest_build_keeps_the_accuracy_budget_and_slow_builds_are_listed():
    from effzoo.budget import fastest_build, slower_than_fp32

    budget = {"min_agreement": 0.98, "max_top1_loss": 0.005}
    res = {"fp32": {"best_throughput_ips": 100.0, "top1": 0.880},
           "int8_a": {"best_throughput_ips": 300.0, "top1": 0.880, "top1_agreement_with_fp32": 0.97,
                      "speedup_vs_fp32": 2.9},                                   # agreement below 98%
           "int8_b": {"best_throughput_ips": 250.0, "top1": 0.874, "top1_agreement_with_fp32": 0.99,
                      "speedup_vs_fp32": 2.5},                                   # loses 0.6 pt
           "ov_fp32": {"best_throughput_ips": 99.0, "top1": 0.880, "top1_agreement_with_fp32": 1.0, "kind": "fp32",
                       "speedup_vs_fp32": 0.99},                                  # OpenVINO's own reference
           "ov_int8": {"best_throughput_ips": 150.0, "top1": 0.878, "top1_agreement_with_fp32": 0.985,
                       "speedup_vs_fp32": 1.4, "runtime_fp32": "ov_fp32", "speedup_vs_runtime_fp32": 0.95},
           "fp16": {"best_throughput_ips": 60.0, "top1": 0.880, "top1_agreement_with_fp32": 1.0,
                    "speedup_vs_fp32": 0.6}}
    assert fastest_build(res, budget) == ("ov_int8", 150.0)
    assert fastest_build({"fp32": {"best_throughput_ips": None, "top1": 0.9}}, budget) is None
    assert slower_than_fp32([{"variant": "v", "results": res}]) == ["v ov_int8 (0.95x)", "v fp16 (0.60x)"]


def test_a_missing_skipped_list_is_an_error_not_nothing_skipped(tmp_path):
    from effzoo.steps.metrics import read_skipped

    with pytest.raises(ZooError, match=rf"{tmp_path / 'skipped.tsv'}: file not found \(the datalist step writes it"):
        read_skipped(str(tmp_path / "skipped.tsv"))
    (tmp_path / "skipped.tsv").write_text("bad.JPEG\tcannot decode\n")
    assert read_skipped(str(tmp_path / "skipped.tsv")) == ["bad.JPEG\tcannot decode"]


def report_metrics(variant: str, random: bool = False) -> dict:
    """A metrics document with an fp32, an ONNX Runtime int8 and an OpenVINO fp32 + int8 build."""
    def build(kind, runtime, top1, agree, ips, torch_x, **speed):
        return {"kind": kind, "runtime": runtime, "top1": top1, "top5": 0.95, "images": 500,
                "cpu": {"target": "vnni"}, "top1_agreement_with_fp32": agree, "best_throughput_ips": ips,
                "best_throughput_at": {"batch": 16, "mode": "build"}, "speedup_vs_torch_eager": {"16": torch_x},
                "model_size_mb": 5.0, **speed}
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
                  "--max-top1-loss", "0.005"])
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
                      "--min-agreement", "0.98", "--max-top1-loss", "0.005"])
    assert not (tmp_path / "s.md").exists()
