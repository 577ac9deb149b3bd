"""Run a vacc build over npz shards on its own runtime: top-k class ids and softmax probabilities per image.

Writes a CSV (file, label, top1..topK ids, prob1..probK) in datalist order, the raw logits as .npy (for
agreement checks between builds), and a manifest (predict.json) with their sha256, the runtime that ran, the
check of this CPU against what the build requires, and the code and package versions. The model is checked
against the sha256 its build.json recorded, and every image row against the digest its shard recorded, before
use. A CPU that lacks what the build requires stops the run, warns, or (on_cpu_mismatch: skip, a bf16 build on a CPU
without bf16) runs nothing: the files then hold no rows and predict.json says why (`not_run`).

CLI: python -m predict --model vacc/X/model.onnx|model.xml --build-json vacc/X/build.json --shards a.npz b.npz \
        --out predictions.csv --logits logits.npy --manifest predict.json --batch 32 --threads 2 \
        --layout-tuning off [--topk 5]
"""
from __future__ import annotations

import argparse
import csv
import resource
import time

import numpy as np

from effzoo import fingerprint
from effzoo.common import LOG, Progress, atomic_path, file_record, write_json
from effzoo.runtime import checked_build, open_build, precision_of
from effzoo.shard_io import iter_shards, read_small


def write_outputs(out_csv: str, out_logits: str, rows: list, logits: np.ndarray, topk: int) -> None:
    """The predictions CSV (file, label, top-k ids, top-k probabilities) and the logits .npy, atomically."""
    header = ["file", "label"] + [f"top{k + 1}" for k in range(topk)] + [f"prob{k + 1}" for k in range(topk)]
    with atomic_path(out_csv, ".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
    with atomic_path(out_logits, ".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, logits)


def predict(model_path: str, shards: list[str], out_csv: str, out_logits: str, batch: int, threads: int,
            topk: int = 5, layout_tuning: bool = False, precision: str = "f32") -> dict:
    """Run the model over the shards; write predictions CSV + logits; return counts, timing and runtime."""
    run, runtime = open_build(model_path, threads, layout_tuning, precision)
    LOG.info("%s: %s", model_path, runtime)
    total, skipped = 0, []
    for s in shards:
        labels, skip = read_small(s, "labels", "skipped")
        total += len(labels)
        skipped.extend(skip.tolist())
    progress = Progress(total, f"predict {model_path}")
    rows, all_logits = [], []
    t_run = 0.0
    for images, labels, files in iter_shards(shards, batch):
        t0 = time.perf_counter()
        logits, probs = run(images)
        t_run += time.perf_counter() - t0
        topk = min(topk, probs.shape[1])   # a model with fewer classes has fewer top-k columns
        top = np.argsort(-probs, axis=1, kind="stable")[:, :topk]
        for j in range(len(top)):
            rows.append([files[j], int(labels[j])] + top[j].tolist() + [f"{probs[j, c]:.6g}" for c in top[j]])
        all_logits.append(logits.astype(np.float32))
        progress.update(len(top))
    write_outputs(out_csv, out_logits, rows,
                  np.concatenate(all_logits) if all_logits else np.zeros((0, 0), np.float32), topk)
    LOG.info("predicted %d images in %.1fs of inference (%d skipped at preprocessing)", len(rows), t_run,
             len(skipped))
    return {"images": len(rows), "skipped": skipped, "inference_s": round(t_run, 3), "runtime": runtime}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--build-json", required=True, help="the build's manifest (records the model's sha256)")
    ap.add_argument("--shards", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--logits", required=True)
    ap.add_argument("--manifest", required=True, help="output: predict.json")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--layout-tuning", choices=["on", "off"], required=True,
                    help="ORT CPU layout pass for SE/SiLU graphs (effzoo/ort_layout.py)")
    a = ap.parse_args(argv)
    build, cpu = checked_build(a.build_json, skippable=True)
    if "skipped" in cpu:   # nothing ran: no rows, and the reason where metrics, the race and the report read it
        write_outputs(a.out, a.logits, [], np.zeros((0, 0), np.float32), a.topk)
        res = {"images": 0, "skipped": [], "inference_s": 0.0, "runtime": None, "not_run": cpu["skipped"]}
    else:
        res = predict(a.model, a.shards, a.out, a.logits, a.batch, a.threads, a.topk, a.layout_tuning == "on",
                      precision_of(build))
    write_json(a.manifest, {**res, "cpu_check": cpu, "model": a.model, "batch": a.batch, "threads": a.threads,
                            "predictions": file_record(a.out), "logits": file_record(a.logits),
                            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                            "provenance": fingerprint.provenance("predict")})
