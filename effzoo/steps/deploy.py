"""deploy/<variant>/: the build a variant's race chose, ready to run without Snakemake.

The choice is race/<variant>.json's decision (effzoo.decision: the fastest build the accuracy evidence allows, on the
CPU the race ran on); the report's fastest build reads the same decision. This step copies the chosen build's model
files and writes model.json: runtime package and version, precision, CPU target and requirement, the preprocessing
(the exact path effzoo.load runs) and its measured speed, class names, the accuracy evidence with its exact
intervals and state (and "accuracy not certified: ..." where it is not), the race's speed figures with their
paired intervals, the objective, batch and threads they were measured with (which effzoo.load runs), the CPU they
were measured on, and every file's sha256. Run it with `effzoo classify deploy/<variant> IMG`.

CLI: python -m deploy --variant V --race race/V.json --metrics metrics/V.json --classes npz/D/classes.txt \
        --build fp32 vacc/V-fp32/build.json [--build ...] --out deploy/V
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from effzoo import fingerprint
from effzoo.common import (
    LOG,
    REBUILD,
    ZooError,
    file_record,
    precision_of,
    read_json,
    read_lines,
    remove_leftovers,
    verify_files,
    write_json,
)


def chosen_build(race: dict, metrics: dict) -> str:
    """The race's choice, after checking that the accuracy it rests on is what effzoo.load reproduces."""
    if Path(metrics["dataset"]["datalist"]).parent.name.endswith("-fast"):
        raise ZooError(f"{race['variant']}: its accuracy was measured with preprocessing.fast, which effzoo.load "
                       f"does not run (it runs the exact path): set preprocessing.fast: false to deploy it")
    return race["decision"]["chosen"]


def speed_record(race: dict, q: str) -> dict:
    """What model.json says of the chosen build's speed: the race's figures, with their paired intervals."""
    r, d = race["builds"][q], race["decision"]
    return {"objective": race["objective"], "mode": "latency", "batch": race["batch"], "threads": race["threads"],
            "images_per_s": r["images_per_s"], "latency_p90_ms": r["latency_p90_ms"],
            "ranked_on": race["ranked_on"], "speed_over_leader": d["builds"][q]["speed_over_leader"], "leader": d["leader"],
            "speed_over_ort_fp32": r.get("speed_over_ort_fp32"), "tied_with_leader": d["tied_with_leader"], "rounds": race["rounds"],
            "excludes_preprocessing": True, "measured_on": race["cpu"]}


def current_umask() -> int:
    """This process's umask (reading it means setting it: it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def deploy(variant: str, race: dict, metrics: dict, builds: dict, build_jsons: dict, classes: list[str],
           out: Path) -> dict:
    """Write deploy/<variant>/ atomically (a temporary folder renamed into place); returns model.json."""
    best = chosen_build(race, metrics)
    build, r = builds[best], metrics["results"][best]
    src = Path(build_jsons[best]).parent
    verify_files(build["files"], src, build_jsons[best])
    # the accuracy model.json records was measured by predict, on the kernel ISA predict ran on
    accuracy_isa = r.get("cpu_check", {}).get("running_isa", build["cpu"].get("checked_isa"))
    evidence = r["evidence"]
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        for name in build["files"]:
            shutil.copyfile(src / name, tmp / name)
        doc = {
            "variant": variant, "quant": best, "runtime": build["options"]["runtime"], "precision": build["kind"],
            "inference_precision": precision_of(build),
            "runtime_package": race["builds"][best]["runtime"],
            "model": Path(build["model"]["path"]).name, "files": {n: file_record(tmp / n) for n in build["files"]},
            "cpu": {**build["cpu"], "checked_isa": accuracy_isa},
            "input": build["input"], "preprocess": build["preprocess"],
            "preprocessing": {**race["preprocessing"], "fast": False},
            "classes": classes, "weights": build["weights"], "tag": build["tag"],
            "accuracy": {"dataset": metrics["dataset"]["name"], "images": r["images"], "top1": r["top1"],
                         "top5": r["top5"], "top1_agreement_with_fp32": evidence["agreement"]["value"],
                         "fp32_top1": metrics["results"]["fp32"]["top1"], "evidence": evidence,
                         "note": race["decision"].get("note")},
            "speed": {**speed_record(race, best),
                      "vs_torch_eager_in_benchmark": (r.get("speed") or {}).get("vs_torch_eager")},
            "decision": {k: race["decision"][k] for k in ("pool", "leader", "tolerance", "require", "passed_over")},
            "left_out": race["left_out"],
            "cpu_notes": [e["statement"] for e in race.get("int8_payoff", {}).values() if "statement" in e],
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
    LOG.info("deploy/%s: %s on %s (%.1f images/s in the race on %s, top-1 %.4f, %s)%s", variant, best,
             doc["runtime"], doc["speed"]["images_per_s"], race["cpu"]["kind"], r["top1"], evidence["state"],
             f"; {doc['accuracy']['note']}" if doc["accuracy"]["note"] else "")
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--race", required=True, help="race/<variant>.json: the decision")
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--classes", required=True, help="class names, one a line (the dataset index's classes.txt)")
    ap.add_argument("--build", nargs=2, action="append", required=True, metavar=("QUANT", "BUILD_JSON"),
                    help="every build, in run_quant order")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    build_jsons = dict(a.build)
    classes = read_lines(a.classes, "class names, one a line")
    if not classes or any(not c.strip() for c in classes):
        raise ZooError(f"{a.classes}: {len(classes)} lines, some empty: expected one class name a line; {REBUILD}")
    deploy(a.variant, read_json(a.race, "race"), read_json(a.metrics, "metrics"),
           {q: read_json(p, "build") for q, p in build_jsons.items()}, build_jsons, classes, Path(a.out))
