"""Run a vacc build over npz shards: top-k class ids and softmax probabilities for every image.

Writes a CSV (file, label, top1..topK ids, prob1..probK) in datalist order, plus the raw logits as .npy
(for agreement checks between builds).

CLI: python scripts/predict.py --model vacc/X/model.onnx --shards a.npz b.npz --out predictions.csv \
         --logits logits.npy [--batch 32 --threads 2 --topk 5 --layout-tuning on|off]
"""
from __future__ import annotations

import argparse
import csv
import time

import numpy as np

from ort_session import make_session
from zoo_common import LOG, Progress, atomic_path, run_main


def iter_batches(shards, batch: int):
    """(images, labels, files) batches read row-range by row-range (a shard is never loaded whole)."""
    from calibrate import read_npz_rows

    for s in shards:
        with np.load(s) as z:
            labels, files = z["labels"], z["files"]
        for i in range(0, len(labels), batch):
            rows = list(range(i, min(i + batch, len(labels))))
            yield read_npz_rows(s, "images", rows), labels[rows], files[rows]


def predict(model_path: str, shards: list[str], out_csv: str, out_logits: str, batch: int = 32,
            threads: int = 2, topk: int = 5, layout_tuning: bool = True) -> dict:
    """Run the model over the shards; write predictions CSV + logits; return counts, timing and runtime."""
    sess, runtime = make_session(model_path, threads, layout_tuning)
    LOG.info("%s: ONNX Runtime CPU session, %d threads, %s", model_path, threads, runtime)
    in_name = sess.get_inputs()[0].name
    total, skipped = 0, []
    for s in shards:
        with np.load(s) as z:
            total += len(z["labels"])
            skipped.extend(z["skipped"].tolist())
    progress = Progress(total, f"predict {model_path}")
    rows, all_logits = [], []
    t_run = 0.0
    for images, labels, files in iter_batches(shards, batch):
        t0 = time.perf_counter()
        logits, probs = sess.run(["logits", "probs"], {in_name: images})
        t_run += time.perf_counter() - t0
        top = np.argsort(-probs, axis=1, kind="stable")[:, :topk]
        for j in range(len(top)):
            rows.append([files[j], int(labels[j])] + top[j].tolist() + [f"{probs[j, c]:.6g}" for c in top[j]])
        all_logits.append(logits.astype(np.float32))
        progress.update(len(top))
    header = ["file", "label"] + [f"top{k + 1}" for k in range(topk)] + [f"prob{k + 1}" for k in range(topk)]
    with atomic_path(out_csv, ".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
    with atomic_path(out_logits, ".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.concatenate(all_logits) if all_logits else np.zeros((0, 0), np.float32))
    LOG.info("predicted %d images in %.1fs of inference (%d skipped at preprocessing)", len(rows), t_run,
             len(skipped))
    return {"images": len(rows), "skipped": skipped, "inference_s": t_run, "runtime": runtime}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--shards", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--logits", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--layout-tuning", choices=["on", "off"], default="on",
                    help="ORT CPU layout pass for SE/SiLU graphs (scripts/ort_session.py)")
    a = ap.parse_args(argv)
    predict(a.model, a.shards, a.out, a.logits, a.batch, a.threads, a.topk, a.layout_tuning == "on")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
