"""deploy/<variant>/: the fastest build of a variant within an accuracy budget, ready to run without Snakemake.

Among the variant's builds whose top-1 agreement with the fp32 build is at least `min_agreement` and whose top-1
loss is at most `max_top1_loss` on the evaluated set (fp32 always qualifies), and whose CPU requirement this
machine meets, it picks the one the benchmark measured fastest, copies its model files and writes model.json:
runtime, precision, CPU target and requirement, preprocessing spec, class names, measured accuracy and speed,
the CPU the speed was measured on, and every file's sha256. Run it with `effzoo classify deploy/<variant> IMG`.

CLI: python -m deploy --variant V --metrics metrics/V.json --classes npz/D/classes.txt --min-agreement 0.98 \
        --max-top1-loss 0.005 --build fp32 vacc/V-fp32/build.json [--build ...] --out deploy/V
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from effzoo import fingerprint
from effzoo.budget import within_budget
from effzoo.common import LOG, ZooError, file_record, read_json, remove_leftovers, verify_files, write_json
from effzoo.cpu_target import covers, cpu_kind


def choose(metrics: dict, builds: dict, budget: dict, running: str) -> tuple[str, list[str]]:
    """(the chosen quant mode, why each other mode was passed over)."""
    results, passed = metrics["results"], []
    ok = {}
    for q, r in results.items():
        if not within_budget(q, results, budget):
            passed.append(f"{q}: outside the accuracy budget (agreement {r.get('top1_agreement_with_fp32')}, "
                          f"top-1 {r['top1']:.4f} vs fp32 {results['fp32']['top1']:.4f})")
        elif not covers(running, builds[q]["cpu"]["requires"]):
            passed.append(f"{q}: requires a {builds[q]['cpu']['requires']} CPU; this one is {running}")
        elif r.get("best_throughput_ips") is None:
            passed.append(f"{q}: not benchmarked")
        else:
            ok[q] = r["best_throughput_ips"]
    if not ok:
        raise ZooError(f"{metrics['variant']}: no build is within the accuracy budget {budget}, runs on this "
                       f"{running} CPU and was benchmarked: " + "; ".join(passed))
    best = max(ok, key=ok.get)
    passed += [f"{q}: {ips:.1f} images/s, slower than {best}" for q, ips in ok.items() if q != best]
    return best, passed


def deploy(variant: str, metrics: dict, builds: dict, build_jsons: dict, classes: list[str], budget: dict,
           out: Path) -> dict:
    """Write deploy/<variant>/ atomically (a temporary folder renamed into place); returns model.json."""
    running = cpu_kind()
    best, passed = choose(metrics, builds, budget, running)
    build, r = builds[best], metrics["results"][best]
    src = Path(build_jsons[best]).parent
    verify_files(build["files"], src, build_jsons[best])
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        for name in build["files"]:
            shutil.copyfile(src / name, tmp / name)
        doc = {
            "variant": variant, "quant": best, "runtime": build["options"]["runtime"], "precision": build["kind"],
            "model": Path(build["model"]["path"]).name, "files": {n: file_record(tmp / n) for n in build["files"]},
            "cpu": build["cpu"], "input": build["input"], "preprocess": build["preprocess"],
            "classes": classes, "weights": build["weights"], "tag": build["tag"],
            "accuracy": {"dataset": metrics["dataset"]["name"], "images": r["images"], "top1": r["top1"],
                         "top5": r["top5"], "top1_agreement_with_fp32": r.get("top1_agreement_with_fp32", 1.0),
                         "fp32_top1": metrics["results"]["fp32"]["top1"]},
            "speed": {"best_throughput_ips": r["best_throughput_ips"], "at": r.get("best_throughput_at"),
                      "batch1_latency_ms": r.get("batch1_latency_ms"), "measured_on": r.get("benchmark_cpu")},
            "chosen_on": running, "budget": budget, "passed_over": passed,
            "provenance": fingerprint.provenance("deploy"),
        }
        for n, rec in doc["files"].items():
            rec["path"] = n
        write_json(tmp / "model.json", doc)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOG.info("deploy/%s: %s on %s (%.1f images/s, top-1 %.4f, agreement %.3f)", variant, best, doc["runtime"],
             r["best_throughput_ips"], r["top1"], doc["accuracy"]["top1_agreement_with_fp32"])
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--classes", required=True, help="class names, one a line (the dataset index's classes.txt)")
    ap.add_argument("--min-agreement", type=float, required=True)
    ap.add_argument("--max-top1-loss", type=float, required=True)
    ap.add_argument("--build", nargs=2, action="append", required=True, metavar=("QUANT", "BUILD_JSON"))
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    build_jsons = dict(a.build)
    classes = Path(a.classes).read_text(encoding="utf-8").splitlines()
    deploy(a.variant, read_json(a.metrics), {q: read_json(p) for q, p in build_jsons.items()}, build_jsons, classes,
           {"min_agreement": a.min_agreement, "max_top1_loss": a.max_top1_loss}, Path(a.out))
