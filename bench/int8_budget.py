"""int8 accuracy budget (quant mode option split_min_agreement) on ../shared/imagenet-sample-500, both CPU policies and
both runtimes: ranges and validation split from one half of the sample, scored on the other half, and the other
way round (two folds, so every image is scored once). Prints, per variant and int8 mode: top-1 change against
fp32 and top-1 agreement with fp32 on the held-out halves (both folds pooled), the agreement on the calibration
split the build met, the promoted layers, and the build's search cost; then which builds reach at least 99%
agreement with at most 0.5 pt top-1 loss.

The CPU policy is forced per mode (cpu_target vnni: plain 8-bit weights, promotions to float; avx512: 7-bit
weights in the saturating GEMM layers, promotions to exact uint8 on ONNX Runtime and to float on OpenVINO).
The avx512 policy computes the same numbers on every CPU kind; vnni-policy builds are scored only on a CPU with
VNNI (elsewhere their int8 kernels saturate and the figures would not be the build's).

--b7: the search cost on tf_efficientnet_b7 at 600x600 (random weights: cost only), with split_min_agreement 1.0 so that
the search walks its whole schedule, 200 split images.

Then, over every build and fold, how well the split's count and the continuous expected_agreement estimate
(effzoo/int8_trials.py split_signals) predict the held-out agreement.

usage: python bench/int8_budget.py [--variants tf_efficientnet_lite0 ...] [--workdir bench-out/int8-budget]
                                   [--methods max percentile kl_divergence mse] [--targets vnni avx512]
                                   [--benchmark] [--b7] [--deploy [--race-rounds 9]]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from _workflow import REPO, SAMPLE

sys.path.insert(0, str(REPO))
from effzoo.cpu_target import cpu_flags, cpu_kind  # noqa: E402
from effzoo.evidence import interval_text  # noqa: E402

METHODS = ("max", "percentile", "kl_divergence", "mse")
TARGETS = ("vnni", "avx512")
LITES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def int8_modes(methods=METHODS) -> dict[str, dict]:
    """Every int8 method x runtime x forced CPU target, named like ov_int8_max_avx512."""
    modes = {}
    for runtime, prefix in (("onnxruntime", ""), ("openvino", "ov_")):
        for method in methods:
            for target in TARGETS:
                modes[f"{prefix}int8_{method}_{target}"] = {"kind": "int8", "method": method, "runtime": runtime,
                                                            "cpu_target": target}
    return modes


def halves(work: Path, seed: int = 14) -> list[Path]:
    """The sample split in two seeded halves, as dataset roots of symbolic links (the images stay in shared/)."""
    lines = [ln.split() for ln in (SAMPLE / "val_label.txt").read_text().splitlines() if ln.strip()]
    random.Random(seed).shuffle(lines)
    roots = []
    for k, part in enumerate((lines[:len(lines) // 2], lines[len(lines) // 2:])):
        root = work / "data" / f"half{k}"
        (root / "val").mkdir(parents=True, exist_ok=True)
        for name, _ in part:
            link = root / "val" / name
            if not link.exists():
                link.symlink_to(SAMPLE / "val" / name)
        (root / "val_label.txt").write_text("".join(f"{f} {c}\n" for f, c in sorted(part)))
        if not (root / "label.txt").exists():
            (root / "label.txt").symlink_to(SAMPLE / "label.txt")
        roots.append(root)
    return roots


def run_fold(work: Path, roots: list[Path], fold: int, variants: list[str], modes: dict, benchmark: bool) -> Path:
    """Calibrate on half `fold`, score on the other half: metrics/<variant>.json for every variant."""
    d = work / f"fold{fold}"
    d.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"] = {f"half{k}": {"root": str(r)} for k, r in enumerate(roots)}
    cfg.update(dataset=f"half{1 - fold}", run_variants=variants, run_quant=["fp32", "ov_fp32"] + list(modes))
    cfg["calibration"] = {"dataset": f"half{fold}", "images": 150, "validation_images": 100}
    cfg["quant_modes"] = {"fp32": {"kind": "fp32"}, "ov_fp32": {"kind": "fp32", "runtime": "openvino"}, **modes}
    cfg["benchmark"] = {"enabled": benchmark}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = [f"{'race' if benchmark else 'metrics'}/{v}.json" for v in variants]
    subprocess.run([sys.executable, "-m", "snakemake", *targets, "-s",
                    str(REPO / "Snakefile"), "-d", str(d), "--cores", "2", "--quiet", "rules", "--rerun-incomplete",
                    "--configfile", str(d / "config.yaml")], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return d


def pooled(folds: list[Path], variant: str, modes: list[str]) -> dict[str, dict]:
    """Per mode: held-out top-1 change (pt) and agreement pooled over the folds, split agreements, search cost."""
    docs = [json.loads((d / f"metrics/{variant}.json").read_text()) for d in folds]
    out = {}
    for q in modes:
        n = sum(doc["results"][q]["images"] for doc in docs)
        agree = sum(doc["results"][q]["top1_agreement_with_fp32"] * doc["results"][q]["images"] for doc in docs)
        top1 = sum(doc["results"][q]["top1"] * doc["results"][q]["images"] for doc in docs)
        ref = sum(doc["results"]["fp32"]["top1"] * doc["results"]["fp32"]["images"] for doc in docs)
        builds = [json.loads((d / f"vacc/{variant}-{q}/build.json").read_text()) for d in folds]
        budgets = [b["details"]["accuracy_budget"] for b in builds]
        races = [json.loads((d / f"race/{variant}.json").read_text()) if (d / f"race/{variant}.json").exists()
                 else {"builds": {}} for d in folds]
        speed = [race["builds"].get(q, {}).get("speed_over_runtime_fp32", {}).get("ratio", [None])[0]
                 for race in races]
        out[q] = {"images": n, "loss_pt": 100 * (ref - top1) / n, "agreement": agree / n,
                  "held_out": [doc["results"][q]["top1_agreement_with_fp32"] for doc in docs],
                  "expected": [b.get("final_expected_agreement") for b in budgets],
                  "kl": [b.get("final_kl") for b in budgets],
                  "split": [b["final_agreement"] for b in budgets], "status": [b["status"] for b in budgets],
                  "promoted": [len(b["promoted"]) for b in budgets],
                  "macs": [b["promoted_macs_fraction"] for b in budgets],
                  "search_s": [b["measured"]["search_s"] for b in budgets], "build_s": [b["build_s"] for b in builds],
                  "trials": [len(b["steps"]) for b in budgets], "speed_over_runtime_fp32": speed}
    return out


def report(variant: str, rows: dict[str, dict]) -> list[str]:
    """Print one variant's table; return the modes that miss a bar."""
    print(f"\n{variant}: held-out top-1 change and agreement with fp32 (both folds pooled), then per fold: split "
          f"agreement met, promoted layers (share of MACs), status, search / build seconds, trials")
    misses = []
    for q, r in rows.items():
        ok = r["agreement"] >= 0.99 and r["loss_pt"] <= 0.5
        if not ok:
            misses.append(f"{variant} {q}")
        folds = "; ".join(f"{s:.2f} {p} ({m:.1%}) {st} {ss:.1f}/{bs:.1f}s {t}" for s, p, m, st, ss, bs, t in zip(
            r["split"], r["promoted"], r["macs"], r["status"], r["search_s"], r["build_s"], r["trials"]))
        speed = ", ".join("-" if s is None else f"{s:.2f}x" for s in r["speed_over_runtime_fp32"])
        print(f"  {q:28s} {-r['loss_pt']:+5.1f} pt  {100 * r['agreement']:5.1f}% of {r['images']}  "
              f"{'meets' if ok else 'MISSES'}  | {folds} | vs its runtime's fp32: {speed}")
    return misses


def signal_report(rows: dict[str, dict]) -> None:
    """How well each split signal predicts the held-out agreement, over every build and fold."""
    pairs = [(h, c, e) for r in rows.values() for h, c, e in zip(r["held_out"], r["split"], r["expected"])
             if e is not None]
    if not pairs:
        return
    held, count, expected = (np.asarray(x) for x in zip(*pairs))
    print(f"\nsplit signals against the held-out agreement, {len(pairs)} builds x folds:")
    for name, pred in (("split count (agreement)", count), ("expected_agreement", expected)):
        err = pred - held
        corr = np.corrcoef(pred, held)[0, 1] if pred.std() > 0 and held.std() > 0 else float("nan")
        print(f"  {name:26s} mean abs error {100 * np.mean(np.abs(err)):.2f} pt, mean error {100 * np.mean(err):+.2f} "
              f"pt, correlation {corr:.2f}")


def raced_text(q: str, raced: dict, state: str) -> str:
    """A raced build's images/s, precision, speed over its runtime's fp32 with the 95% interval, and race state."""
    own = raced.get("speed_over_runtime_fp32")
    over = (f", {own['ratio'][0]:.2f}x {own['build']} [{own['ratio'][1]:.2f}, {own['ratio'][2]:.2f}]"
            if own and own["build"] != q else "")
    return f"{raced['images_per_s']:7.1f} images/s at {raced['inference_precision'] or 'its precision'}{over}, {state}"


def deploy_fold(work: Path, roots: list[Path], fold: int, variant: str, rounds: int | None = None) -> None:
    """The default job's builds, calibrated on half `fold` and scored on the other half, raced (`rounds` rounds in
    one look where given, else the default race) and deployed: prints every build's accuracy evidence, its speed
    over its runtime's fp32 with the 95% interval, and the decision."""
    d = work / f"deploy{fold}"
    d.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"] = {f"half{k}": {"root": str(r)} for k, r in enumerate(roots)}
    cfg.update(dataset=f"half{1 - fold}", run_variants=[variant])
    cfg["calibration"] = {"dataset": f"half{fold}", "images": 150, "validation_images": 100}
    if rounds:
        cfg["deploy"] = {"race": {"rounds": rounds, "looks": 1}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "snakemake", f"deploy/{variant}", "-s", str(REPO / "Snakefile"), "-d",
                    str(d), "--cores", "2", "--quiet", "rules", "--rerun-incomplete", "--configfile",
                    str(d / "config.yaml")], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    m = json.loads((d / f"metrics/{variant}.json").read_text())
    race = json.loads((d / f"race/{variant}.json").read_text())
    dec = race["decision"]
    print(f"\n{variant}, calibrated on half {fold}, scored on half {1 - fold} "
          f"({m['dataset']['images_scored']} images); race of {race['rounds']} rounds, load average "
          f"{race['loadavg_before']} -> {race['loadavg_after']}:")
    for q, r in m["results"].items():
        ev, b = r["evidence"], race["builds"].get(q)
        where = (raced_text(q, b, dec["builds"][q]["speed_state"]) if b
                 else f"not raced: {race['left_out'][q]}")
        print(f"  {q:24s} {ev['state']:9s} agreement {interval_text(ev['agreement'])} top-1 loss "
              f"{interval_text(ev['top1_loss'], digits=2)} pt | {where}")
    chosen = dec["chosen"]
    print(f"  deployed: {chosen} ({m['results'][chosen]['evidence']['state']}; {dec['pool']})"
          + (f"; {dec['note']}" if dec.get("note") else ""))


def b7_cost(work: Path) -> None:
    """The int8 build of tf_efficientnet_b7 (600x600, random weights) with a search walked to its end."""
    d = work / "b7"
    d.mkdir(parents=True, exist_ok=True)
    roots = halves(work)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"] = {"half0": {"root": str(roots[0])}}
    cfg.update(dataset="half0", run_variants=["efficientnet_b7"], run_quant=["fp32", "int8_percentile"])
    cfg["variants"]["efficientnet_b7"]["weights"] = "random"
    cfg["calibration"] = {"dataset": "half0", "images": 16, "validation_images": 200}
    cfg["quant_modes"] = {"fp32": cfg["quant_modes"]["fp32"],
                          "int8_percentile": {"kind": "int8", "method": "percentile", "split_min_agreement": 1.0}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "snakemake", "vacc/efficientnet_b7-int8_percentile/build.json", "-s",
                    str(REPO / "Snakefile"), "-d", str(d), "--cores", "2", "--quiet", "rules", "--rerun-incomplete",
                    "--configfile", str(d / "config.yaml")], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    b = json.loads((d / "vacc/efficientnet_b7-int8_percentile/build.json").read_text())
    s = b["details"]["accuracy_budget"]
    timed = s["measured"]   # the search's seconds: per trial, the ranking pass, the whole search
    per_image = max(timed["trials"][str(t["layers"])]["s"] / t["images_run"] for t in s["steps"])
    opens = max(t["open_s"] for t in timed["trials"].values())
    n = len(s["ranking"]["layers"])
    bound = timed["rank_s"] + (2 * (n - 1).bit_length() + 2) * (opens + per_image * s["split_images"])
    print(f"\nefficientnet_b7 @600 int8_percentile (random weights; split_min_agreement 1.0): build {b['build_s']:.0f} s "
          f"(peak RSS {b['build_peak_rss_mb']:.0f} MB), "
          f"search {timed['search_s']:.0f} s = ranking {timed['rank_s']:.0f} s ({s['ranking']['images']} images, {n} layers) "
          f"+ {len(s['steps'])} trials (session open up to {opens:.1f} s, {per_image:.2f} s per image, early exits: "
          f"{[t['images_run'] for t in s['steps']]} of {s['split_images']} images); a schedule that runs every "
          f"trial to the end costs at most {bound / 60:.1f} min")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(LITES))
    ap.add_argument("--workdir", default=str(REPO / "bench-out" / "int8-budget"))
    ap.add_argument("--benchmark", action="store_true",
                    help="also run the benchmark step (speed vs fp32) on the first fold")
    ap.add_argument("--b7", action="store_true", help="measure the search cost on efficientnet_b7 instead")
    ap.add_argument("--deploy", action="store_true", help="instead: the default job's builds of each variant on "
                    "the first fold, raced and deployed, with every build's accuracy evidence and the decision")
    ap.add_argument("--race-rounds", type=int, help="with --deploy: race this many rounds in one look (default: "
                    "the configured race)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    a = ap.parse_args()
    work = Path(a.workdir).resolve()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f in ("avx_vnni", "avx2"))
    print(f"CPU: {cpu_kind()} kind, flags {' '.join(flags)}")
    if a.b7:
        b7_cost(work)
        return
    if a.deploy:
        for variant in a.variants:
            deploy_fold(work, halves(work), 0, variant, a.race_rounds)
        return
    modes = {q: o for q, o in int8_modes(a.methods).items() if o["cpu_target"] in a.targets}
    if cpu_kind() != "vnni":
        print("this CPU has no VNNI: the vnni-policy modes are not scored here (their kernels would saturate)")
        modes = {q: o for q, o in modes.items() if o["cpu_target"] != "vnni"}
    roots = halves(work)
    folds = [run_fold(work, roots, k, a.variants, modes, a.benchmark and k == 0) for k in (0, 1)]
    misses, every = [], {}
    for v in a.variants:
        rows = pooled(folds, v, list(modes))
        misses += report(v, rows)
        every.update({f"{v} {q}": r for q, r in rows.items()})
    signal_report(every)
    print("\nbars (>= 99% agreement, <= 0.5 pt loss, held-out): "
          + ("every build meets them" if not misses else f"{len(misses)} of {len(modes) * len(a.variants)} builds "
             f"miss: {', '.join(misses)}"))


if __name__ == "__main__":
    main()
