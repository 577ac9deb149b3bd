"""deploy/<variant>/: the fastest build of a variant within an accuracy budget, ready to run without Snakemake.

Among the variant's builds whose top-1 agreement with the fp32 build is at least `min_agreement` and whose top-1
loss is at most `max_top1_loss` on the evaluated set (fp32 always qualifies), and whose CPU requirement this
machine meets, it picks the fastest in the mode the deployed model runs in (effzoo.budget.pick_fastest: latency
mode at the largest benchmark batch, ranked on the speed over PyTorch eager timed beside it in each build's job;
ties within the measured noise go to the more accurate build). It copies the model files and writes model.json:
runtime, precision, CPU target and requirement, preprocessing spec, class names, measured accuracy and speed (and
the mode, batch and threads it was measured with, which effzoo.load runs it with), the CPU the speed was measured
on, and every file's sha256. Run it with `effzoo classify deploy/<variant> IMG`.

CLI: python -m deploy --variant V --metrics metrics/V.json --classes npz/D/classes.txt --min-agreement 0.98 \
        --max-top1-loss 0.005 --speed-tolerance 0.15 --build fp32 vacc/V-fp32/build.json [--build ...] --out deploy/V
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from effzoo import fingerprint
from effzoo.budget import pick_fastest, within_budget
from effzoo.common import (
    LOG,
    REBUILD,
    ZooError,
    file_record,
    read_json,
    read_lines,
    remove_leftovers,
    verify_files,
    write_json,
)
from effzoo.cpu_target import covers, cpu_kind


def choose(metrics: dict, builds: dict, budget: dict, running: str) -> tuple[str, list[str], list[str]]:
    """(the chosen quant mode, why each other mode was passed over, the modes tied with it on speed)."""
    results, passed = metrics["results"], []
    if "fp32" not in results:
        raise ZooError(f"{metrics['variant']}: no fp32 build in the metrics: it is the reference of the budget; "
                       f"add fp32 to run_quant")
    ok = []
    for q in builds:   # run_quant order
        r = results[q]
        if not within_budget(q, results, budget):
            passed.append(f"{q}: outside the accuracy budget (agreement {r.get('top1_agreement_with_fp32')}, "
                          f"top-1 {r['top1']:.4f} vs fp32 {results['fp32']['top1']:.4f})")
        elif not covers(running, builds[q]["cpu"]["requires"]):
            passed.append(f"{q}: requires a {builds[q]['cpu']['requires']} CPU; this one is {running}")
        elif not r.get("speed"):
            passed.append(f"{q}: not benchmarked")
        else:
            ok.append(q)
    if not ok:
        raise ZooError(f"{metrics['variant']}: no build is within the accuracy budget {budget}, runs on this "
                       f"{running} CPU and was benchmarked: " + "; ".join(passed))
    best, ties = pick_fastest(results, ok, budget["speed_tolerance"])
    for q in ok:
        if q == best:
            continue
        s = results[q]["speed"]
        why = (f"tied with {best} on speed within the measured noise, and not more accurate" if q in ties
               else f"slower than {best}")
        passed.append(f"{q}: {s['vs_torch_eager']:.2f}x PyTorch eager ({s['images_per_s']:.1f} images/s), {why}")
    return best, passed, ties


def current_umask() -> int:
    """This process's umask (reading it means setting it: it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def deploy(variant: str, metrics: dict, builds: dict, build_jsons: dict, classes: list[str], budget: dict,
           out: Path) -> dict:
    """Write deploy/<variant>/ atomically (a temporary folder renamed into place); returns model.json."""
    running = cpu_kind()
    best, passed, ties = choose(metrics, builds, budget, running)
    build, r = builds[best], metrics["results"][best]
    src = Path(build_jsons[best]).parent
    verify_files(build["files"], src, build_jsons[best])
    # the accuracy model.json records was measured by predict, on the kernel ISA predict ran on
    accuracy_isa = r.get("cpu_check", {}).get("running_isa", build["cpu"].get("checked_isa"))
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        for name in build["files"]:
            shutil.copyfile(src / name, tmp / name)
        doc = {
            "variant": variant, "quant": best, "runtime": build["options"]["runtime"], "precision": build["kind"],
            "model": Path(build["model"]["path"]).name, "files": {n: file_record(tmp / n) for n in build["files"]},
            "cpu": {**build["cpu"], "checked_isa": accuracy_isa},
            "input": build["input"], "preprocess": build["preprocess"],
            "classes": classes, "weights": build["weights"], "tag": build["tag"],
            "accuracy": {"dataset": metrics["dataset"]["name"], "images": r["images"], "top1": r["top1"],
                         "top5": r["top5"], "top1_agreement_with_fp32": r.get("top1_agreement_with_fp32", 1.0),
                         "fp32_top1": metrics["results"]["fp32"]["top1"]},
            "speed": {**r["speed"], "batch1_latency_ms": r.get("batch1_latency_ms"),
                      "measured_on": r.get("benchmark_cpu"), "tied_with": ties},
            "chosen_on": running, "budget": budget, "passed_over": passed,
            "provenance": fingerprint.provenance("deploy"),
        }
        for n, rec in doc["files"].items():
            rec["path"] = n
        write_json(tmp / "model.json", doc)
        tmp.chmod(0o777 & ~current_umask())   # mkdtemp makes it private: give it an ordinary folder's mode
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOG.info("deploy/%s: %s on %s (%.2fx PyTorch eager, %.1f images/s, top-1 %.4f, agreement %.3f)", variant, best,
             doc["runtime"], r["speed"]["vs_torch_eager"], r["speed"]["images_per_s"], r["top1"],
             doc["accuracy"]["top1_agreement_with_fp32"])
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--classes", required=True, help="class names, one a line (the dataset index's classes.txt)")
    ap.add_argument("--min-agreement", type=float, required=True)
    ap.add_argument("--max-top1-loss", type=float, required=True)
    ap.add_argument("--speed-tolerance", type=float, required=True,
                    help="speeds within this fraction of the fastest's are ties (chosen by accuracy, then order)")
    ap.add_argument("--build", nargs=2, action="append", required=True, metavar=("QUANT", "BUILD_JSON"),
                    help="every build, in run_quant order (the order that breaks a tie of speed and accuracy)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    build_jsons = dict(a.build)
    classes = read_lines(a.classes, "class names, one a line")
    if not classes or any(not c.strip() for c in classes):
        raise ZooError(f"{a.classes}: {len(classes)} lines, some empty: expected one class name a line; {REBUILD}")
    deploy(a.variant, read_json(a.metrics, "metrics"), {q: read_json(p, "build") for q, p in build_jsons.items()},
           build_jsons, classes, {"min_agreement": a.min_agreement, "max_top1_loss": a.max_top1_loss,
                                  "speed_tolerance": a.speed_tolerance}, Path(a.out))
