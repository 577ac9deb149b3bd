"""Score predictions against labels and write metrics/<variant>.json.

Per quant mode: top-1, top-5, images scored, images skipped at preprocessing, and (for modes other than
the reference) top-1 agreement with the reference mode's predictions. `evidence` holds each of them with its exact
interval, the paired top-1 loss against the reference, and the build's state against the deploy budget
(effzoo.evidence: certified, unproven or refuted). From the benchmark step's perf JSONs: the build's own
benchmark in the deploy mode (latency mode, the largest batch: images/s and the paired ratio over PyTorch eager
timed in the same job). Ratios between builds come from the race (race/<variant>.json), which times them in one
process. Plus the model facts: params (M), GMACs/GFLOPs with their
convention, input size, the preprocessing spec and the weights source. Predictions are checked against the
sha256 in their predict.json before they are scored. A build that did not run on this CPU (its check said skip:
bf16 without bf16) has `not_run`, the reason, and no figure. Metrics from random weights carry
``"random_weights": true`` and a warning.

CLI: python -m metrics --variant V --export-info X.json --spec-json S.json --datalist D.tsv --skipped S.tsv \
        --dataset NAME --mode fp32 output/V-fp32/predictions.csv output/V-fp32/predict.json \
        vacc/V-fp32/build.json [--mode ...] [--perf fp32 perf/V-fp32.json ...] --min-agreement 0.98 \
        --max-top1-loss 0.005 --out metrics/V.json
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from effzoo import fingerprint
from effzoo.budget import split_search_record
from effzoo.common import ZooError, read_json, read_lines, verify_file, write_json
from effzoo.evidence import accuracy_evidence


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


def read_skipped(path: str) -> list[str]:
    """Files skipped at preprocessing (skipped.tsv beside the datalist; one line each, with the reason)."""
    return [ln for ln in read_lines(path, "the datalist step writes it beside datalist.tsv") if ln]


def torch_ratio(perf: dict, perf_path: str, bs: str) -> float:
    """The build's paired speed over PyTorch eager at a batch size (a clear error for a perf JSON without it)."""
    try:
        return perf["results"][bs]["build"]["speedup_vs_torch_eager"]
    except KeyError:
        raise ZooError(f"{perf_path}: no speed over PyTorch eager at batch {bs} (a benchmark run without its "
                       f"baseline, or damaged): rerun the benchmark step for it") from None


def deploy_speed(perf: dict, perf_path: str) -> dict:
    """A build's speed in the mode the deployed model runs in (the perf JSON's deploy_mode: latency mode, the
    largest batch size): images/s and its paired speed over PyTorch eager timed in the same job, with its spread."""
    mode = perf["deploy_mode"]
    r = perf["results"][str(mode["batch"])]["build"]
    lo, hi = r.get("speedup_vs_torch_eager_range", [None, None])
    return {**mode, "images_per_s": round(r["throughput_ips"], 2),
            "vs_torch_eager": round(torch_ratio(perf, perf_path, str(mode["batch"])), 4),
            "vs_torch_eager_range": [round(lo, 4), round(hi, 4)] if lo is not None else None}


def same_dataset(datalist_a: str, datalist_b: str) -> bool:
    """Whether two datalists (npz/<dataset>/<geometry>/datalist.tsv) are of the same dataset."""
    return Path(datalist_a).resolve().parent.parent == Path(datalist_b).resolve().parent.parent


def evidence_against(scored: tuple, reference: tuple, budget: dict, is_reference: bool = False) -> dict:
    """A build's accuracy evidence against the reference build on the same images (effzoo.evidence): its top-1,
    top-5 and agreement with exact intervals, the paired top-1 loss, and its state against the deploy budget.
    scored, reference: (labels, top-k ids)."""
    labels, top = scored
    right, ref_right = top[:, 0] == labels, reference[1][:, 0] == labels
    return accuracy_evidence(int(right.sum()), int((top[:, :5] == labels[:, None]).any(1).sum()),
                             int((top[:, 0] == reference[1][:, 0]).sum()), int((ref_right & ~right).sum()),
                             int((right & ~ref_right).sum()), len(labels), budget, is_reference)


def int8_record(build: dict, datalist: str) -> dict:
    """An int8 build's calibration (and whether it used the evaluated images) and its split search."""
    cal = build["calibration"]
    calibration = {"images": cal["images"], "classes_represented": cal["classes_represented"],
                   "content_sha256": cal["content_sha256"], "calibration_s": cal["calibration_s"],
                   "peak_rss_mb": cal["peak_rss_mb"], "build_peak_rss_mb": build["build_peak_rss_mb"],
                   "method": build["details"]["method"], "reduce_range": build["details"]["reduce_range"],
                   "on_evaluated_images": "source_datalist" in cal and same_dataset(cal["source_datalist"], datalist)}
    return {"calibration": calibration, "accuracy_budget": split_search_record(build["details"]["accuracy_budget"])}


def speed_record(p: dict, perf_path) -> dict:
    """What metrics keeps of a build's benchmark (perf JSON `p`)."""
    out = {"speed": deploy_speed(p, perf_path), "batch1_latency_ms": p["batch1_latency_ms"],
           "best_throughput_ips": p["best_throughput_ips"],
           "speedup_vs_torch_eager": {bs: r["build"].get("speedup_vs_torch_eager") for bs, r in p["results"].items()},
           "best_throughput_at": p["best_throughput_at"], "benchmark_cpu": {"model": p["cpu"], "flags": p["cpu_flags"]},
           "benchmark": str(perf_path)}
    if p["warnings"]:
        out["benchmark_warnings"] = p["warnings"]
    return out


def build_metrics(variant: str, export_info: dict, spec: dict, modes: dict, datalist: str, skipped_tsv: str,
                  dataset: str, budget: dict, reference: str = "fp32", perf: dict | None = None) -> dict:
    """modes: name -> (predictions.csv, predict.json, build.json); perf: name -> perf JSON path; budget: the deploy
    budget the evidence is stated against. Returns the metrics document."""
    results, tops = {}, {}
    skipped = read_skipped(skipped_tsv)
    predicted = {name: read_json(j, "predict") for name, (_, j, _) in modes.items()}
    for name, (pred_csv, predict_json, _) in modes.items():
        verify_file(pred_csv, predicted[name]["predictions"]["sha256"], predict_json)
    perf_docs = {name: read_json(path, "perf") for name, path in (perf or {}).items()}
    builds = {name: read_json(b, "build") for name, (_, _, b) in modes.items()}
    for name, (pred_csv, _, build_json) in modes.items():
        build = builds[name]
        if "not_run" in predicted[name]:   # its CPU check said skip: no figure of it, only why
            results[name] = {"not_run": predicted[name]["not_run"], "kind": build["kind"], "build": str(build_json),
                             "runtime": build["options"]["runtime"], "cpu": build["cpu"],
                             "cpu_check": predicted[name]["cpu_check"], "model_size_mb": build["model"]["size_mb"]}
            continue
        files, labels, top = read_predictions(pred_csv)
        res = score(labels, top)
        res.update({"skipped_images": len(skipped), "model_size_mb": build["model"]["size_mb"],
                    "build": str(build_json), "predictions": str(pred_csv), "kind": build["kind"],
                    "runtime": build["options"]["runtime"], "cpu": build["cpu"],
                    "cpu_check": predicted[name]["cpu_check"]})
        if build.get("calibration"):
            res.update(int8_record(build, datalist))
        if name in perf_docs and "not_run" not in perf_docs[name]:
            res.update(speed_record(perf_docs[name], perf[name]))
        results[name] = res
        tops[name] = (labels, top)
    if reference in tops:
        for name in tops:
            results[name]["evidence"] = evidence_against(tops[name], tops[reference], budget, name == reference)
            if name != reference:
                results[name]["top1_agreement_with_" + reference] = results[name]["evidence"]["agreement"]["value"]
                if "accuracy_budget" in results[name]:  # beside it: the same figure on the calibration split
                    results[name]["split_agreement_with_" + reference] = results[name]["accuracy_budget"][
                        "final_agreement"]
    w = export_info["weights"]
    doc = {
        "variant": variant, "timm_tag": export_info["tag"], "weights": w, "random_weights": bool(w["random"]),
        "dataset": {"name": dataset, "datalist": datalist,
                    "images_scored": next(r["images"] for r in results.values() if "images" in r),
                    "images_skipped": len(skipped), "skipped": skipped,
                    "counting": "top-1/top-5 over images scored; skipped images are excluded (on_bad_image: skip)"
                    if skipped else "every image in the datalist was scored"},
        "input_size": spec["input_size"], "preprocess": spec,
        "params_m": export_info["params_m"], "params_torch": export_info["params_torch"],
        "gmacs": export_info["gmacs"], "gflops": export_info["gflops"],
        "gflops_with_elementwise": export_info["gflops_with_elementwise"],
        "flops_convention": export_info["flops_convention"], "export_check": export_info["check"],
        "results": results, "quant_order": list(modes), "provenance": fingerprint.provenance("metrics"),
        "calibration_on_evaluated_images": any(r.get("calibration", {}).get("on_evaluated_images")
                                               for r in results.values()),
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
    ap.add_argument("--skipped", required=True, help="skipped.tsv beside the datalist")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--mode", nargs=4, action="append", metavar=("NAME", "PREDICTIONS", "PREDICT_JSON", "BUILD_JSON"),
                    required=True)
    ap.add_argument("--perf", nargs=2, action="append", metavar=("NAME", "PERF_JSON"), default=[])
    ap.add_argument("--min-agreement", type=float, required=True, help="deploy budget: top-1 agreement with fp32")
    ap.add_argument("--max-top1-loss", type=float, required=True, help="deploy budget: top-1 loss against fp32")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    modes = {n: (p, j, b) for n, p, j, b in a.mode}
    doc = build_metrics(a.variant, read_json(a.export_info, "export"), read_json(a.spec_json, "spec"), modes,
                        a.datalist, a.skipped, a.dataset, {"min_agreement": a.min_agreement,
                                                           "max_top1_loss": a.max_top1_loss}, perf=dict(a.perf))
    write_json(a.out, doc)
