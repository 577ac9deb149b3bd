"""Score predictions against labels and write metrics/<variant>.json.

Per quant mode: top-1, top-5, images scored, images skipped at preprocessing, and (for modes other than
the reference) top-1 agreement with the reference mode's predictions. Plus the model facts: params (M),
GMACs/GFLOPs with their convention, input size, the preprocessing spec and the weights source. Metrics
from random weights carry ``"random_weights": true`` and a warning.

CLI: python scripts/metrics.py --variant V --export-info X.json --spec-json S.json --datalist D.tsv \
        --mode fp32 output/V-fp32/predictions.csv vacc/V-fp32/build.json [--mode ...] --out metrics/V.json
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from zoo_common import ZooError, read_json, run_main, write_json


def read_predictions(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(files, labels (N,), top-k ids (N, k)) from a predictions CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        r = csv.reader(fh)
        header = next(r)
        k = sum(1 for h in header if h.startswith("top"))
        files, labels, top = [], [], []
        for row in r:
            files.append(row[0])
            labels.append(int(row[1]))
            top.append([int(x) for x in row[2:2 + k]])
    return files, np.asarray(labels, np.int64), np.asarray(top, np.int64).reshape(len(files), k)


def score(labels: np.ndarray, top: np.ndarray) -> dict:
    """top-1 / top-5 accuracy of top-k predictions."""
    n = len(labels)
    if n == 0:
        raise ZooError("no images to score")
    return {"top1": float((top[:, 0] == labels).mean()), "top5": float((top[:, :5] == labels[:, None]).any(1).mean()),
            "images": int(n)}


def read_skipped(datalist: str) -> list[str]:
    """Files skipped at preprocessing, listed beside the datalist."""
    p = Path(datalist).with_name("skipped.tsv")
    return [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln] if p.exists() else []


def build_metrics(variant: str, export_info: dict, spec: dict, modes: dict, datalist: str, dataset: str,
                  reference: str = "fp32", perf: dict | None = None) -> dict:
    """modes: name -> (predictions.csv, build.json); perf: name -> perf JSON. Returns the metrics document."""
    results, tops = {}, {}
    skipped = read_skipped(datalist)
    for name, (pred_csv, build_json) in modes.items():
        files, labels, top = read_predictions(pred_csv)
        build = read_json(build_json)
        res = score(labels, top)
        res.update({"skipped_images": len(skipped), "model_size_mb": build["model"]["size_mb"],
                    "build": str(build_json), "predictions": str(pred_csv), "kind": build["kind"]})
        if build.get("speed"):
            res["speedup_vs_fp32"] = build["speed"]["speedup_vs_fp32"]
            res["faster_than_fp32"] = build["speed"]["faster_than_fp32"]
        if build.get("calibration"):
            cal = build["calibration"]
            res["calibration"] = {"images": cal["images"], "classes_represented": cal["classes_represented"],
                                  "content_sha256": cal["content_sha256"], "calibration_s": cal["calibration_s"],
                                  "peak_rss_mb": build["peak_rss_mb"], "method": build["details"]["method"],
                                  "reduce_range": build["details"]["reduce_range"]}
        if perf and name in perf:
            p = read_json(perf[name])
            res["batch1_latency_ms"] = p["batch1_latency_ms"]
            res["best_throughput_ips"] = p["best_throughput_ips"]
            res["speedup_vs_torch_eager"] = {bs: r["onnxruntime"].get("speedup_vs_torch_eager")
                                             for bs, r in p["results"].items()}
            res["benchmark"] = str(perf[name])
            if p["warnings"]:
                res["benchmark_warnings"] = p["warnings"]
        results[name] = res
        tops[name] = top[:, 0]
    if reference in tops:
        for name in results:
            if name != reference:
                results[name]["top1_agreement_with_" + reference] = float((tops[name] == tops[reference]).mean())
    w = export_info["weights"]
    doc = {
        "variant": variant, "timm_tag": export_info["tag"], "weights": w, "random_weights": bool(w["random"]),
        "dataset": {"name": dataset, "datalist": datalist, "images_scored": next(iter(results.values()))["images"],
                    "images_skipped": len(skipped), "skipped": skipped,
                    "counting": "top-1/top-5 over images scored; skipped images are excluded (on_bad_image: skip)"
                    if skipped else "every image in the datalist was scored"},
        "input_size": spec["input_size"], "preprocess": spec,
        "params_m": export_info["params_m"], "params_torch": export_info["params_torch"],
        "gmacs": export_info["gmacs"], "gflops": export_info["gflops"],
        "gflops_with_elementwise": export_info.get("gflops_with_elementwise"),
        "gflops_torch_flopcounter": export_info.get("gflops_torch_flopcounter"),
        "flops_convention": export_info["flops_convention"], "export_check": export_info["check"],
        "results": results,
    }
    if w["random"]:
        doc["warning"] = "RANDOM WEIGHTS (explicitly configured): accuracy figures are meaningless"
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--export-info", required=True)
    ap.add_argument("--spec-json", required=True)
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--mode", nargs=3, action="append", metavar=("NAME", "PREDICTIONS", "BUILD_JSON"),
                    required=True)
    ap.add_argument("--perf", nargs=2, action="append", metavar=("NAME", "PERF_JSON"), default=[])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    modes = {n: (p, b) for n, p, b in a.mode}
    doc = build_metrics(a.variant, read_json(a.export_info), read_json(a.spec_json), modes, a.datalist, a.dataset,
                        perf=dict(a.perf))
    write_json(a.out, doc)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
