"""Gather the parts of a build's predictions (predict run over groups of shards) into one predictions.csv,
logits.npy and predict.json, byte for byte what one predict job over every shard writes.

Each part's files are checked against the sha256 its predict.json recorded; the parts must come from the same
model, runtime, batch and threads (their rows then are what one job computes: predict batches within shards).

CLI: python -m gather_predictions --manifests parts/00000-00024/predict.json parts/00025-00049/predict.json \
        --out predictions.csv --logits logits.npy --manifest predict.json
"""
from __future__ import annotations

import argparse
import shutil

import numpy as np

from effzoo import fingerprint
from effzoo.common import LOG, ZooError, atomic_path, file_record, read_json, verify_file, write_json

SAME_IN_EVERY_PART = ("model", "batch", "threads", "runtime")


def gather(manifests: list[str], out_csv: str, out_logits: str) -> dict:
    """Concatenate the parts' predictions and logits in the order given; return the gathered manifest fields."""
    parts = [read_json(m, "predict") for m in manifests]
    for field in SAME_IN_EVERY_PART:
        values = {str(p.get(field)) for p in parts}
        if len(values) > 1:
            raise ZooError(f"{', '.join(manifests)}: the parts differ in {field} ({sorted(values)}): rerun them with "
                           f"one configuration (snakemake --forcerun predict_part)")
    not_run = [m for m, p in zip(manifests, parts) if "not_run" in p]
    if not_run and len(not_run) < len(parts):
        why = parts[manifests.index(not_run[0])]["not_run"]
        raise ZooError(f"{', '.join(not_run)}: these parts did not run ({why}) "
                       f"and the others did: the nodes differ; rerun them on nodes of one CPU kind "
                       f"(snakemake --forcerun predict_part)")
    for m, p in zip(manifests, parts):
        verify_file(p["predictions"]["path"], p["predictions"]["sha256"], m)
        verify_file(p["logits"]["path"], p["logits"]["sha256"], m)
    with atomic_path(out_csv, ".csv") as tmp:
        with open(tmp, "wb") as out:
            for i, p in enumerate(parts):
                with open(p["predictions"]["path"], "rb") as fh:
                    header = fh.readline()
                    if i == 0:
                        out.write(header)
                    shutil.copyfileobj(fh, out)
    arrays = [np.load(p["logits"]["path"], mmap_mode="r") for p in parts]
    arrays = [a for a in arrays if a.size] or arrays[:1]
    with atomic_path(out_logits, ".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.concatenate(arrays) if len(arrays) > 1 else np.asarray(arrays[0]))
    images = sum(p["images"] for p in parts)
    LOG.info("gathered %d parts: %d images", len(parts), images)
    first = parts[0]
    # the worst part's check: one that failed, else one on another kernel ISA than its build was checked on; and
    # every kernel ISA the parts ran on (a cluster's nodes may differ)
    checks = [p["cpu_check"] for p in parts]
    worst = next((c for c in checks if not c.get("ok", True)), next((c for c in checks if "isa_note" in c), checks[0]))
    isas = sorted({c["running_isa"] for c in checks if "running_isa" in c})
    cpu_check = {**worst, "running_isa": "+".join(isas)} if len(isas) > 1 else worst
    return {**({"not_run": first["not_run"]} if not_run else {}), "images": images, "skipped": [s for p in parts for s in p["skipped"]],
            "inference_s": round(sum(p["inference_s"] for p in parts), 3), "runtime": first["runtime"],
            "cpu_check": cpu_check, "model": first["model"], "batch": first["batch"],
            "threads": first["threads"], "peak_rss_mb": max(p.get("peak_rss_mb", 0.0) for p in parts),
            "parts": [{"manifest": m, "images": p["images"], "inference_s": p["inference_s"],
                       "cpu_check": p["cpu_check"]} for m, p in zip(manifests, parts)]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifests", nargs="+", required=True, help="the parts' predict.json, in shard order")
    ap.add_argument("--out", required=True)
    ap.add_argument("--logits", required=True)
    ap.add_argument("--manifest", required=True, help="output: predict.json")
    a = ap.parse_args(argv)
    res = gather(a.manifests, a.out, a.logits)
    write_json(a.manifest, {**res, "predictions": file_record(a.out), "logits": file_record(a.logits),
                            "provenance": fingerprint.provenance("gather_predictions")})
