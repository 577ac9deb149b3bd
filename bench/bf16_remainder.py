"""OpenVINO at bf16 on a CPU that computes it: the fp32 IR (`ov_bf16` against `ov_fp32`) and the int8 builds with
their float remainder (what stays float between the quantized layers) at bf16 against f32, in one interleaved run.

For each variant the workflow builds ov_fp32, ov_bf16 and the OpenVINO int8 builds (calibrated on the demo
photos: ranges are all speed needs) and scores them on ../shared/imagenet-sample-500. This script then runs each
int8 build over the same images with its remainder at bf16, and prints:
  * top-1 and agreement with ov_fp32 (f32) on the sample, with 95% intervals (Clopper-Pearson), for every engine;
  * the agreement of each int8 build at bf16 with the same build at f32;
  * speed: images/s (median of the rounds) and the paired speed over the f32 engine of the same graph, geometric
    mean with its 95% interval (Student's t on the per-round log ratios).
Random-weight variants (efficientnet_b0 here: no B0..B8 weights can be had offline) give speed only; their top-1
is that of an untrained model.

--no-amx: the same run with AMX refused (bench/isa_numerics.py's shim), so that OpenVINO's bf16 and int8 kernels
fall back to AVX512_BF16 and AVX-512 VNNI: the path of a CPU with avx512_bf16 and no AMX, on an AMX CPU.

usage: python bench/bf16_remainder.py [--variants efficientnet_b0 tf_efficientnet_lite0]
                                      [--workdir bench-out/bf16-remainder] [--batch 16] [--rounds 9] [--iterations 3]
                                      [--no-amx]
Needs a CPU with avx512_bf16 or amx_bf16 (elsewhere OpenVINO would run bf16 emulated or at f32: refused).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from _workflow import REPO, SAMPLE
from isa_numerics import noamx_shim

sys.path.insert(0, str(REPO))
from effzoo import runtime, speed  # noqa: E402
from effzoo.common import Progress  # noqa: E402
from effzoo.cpu_target import bf16_isa, cpu_flags, cpu_name  # noqa: E402
from effzoo.evidence import clopper_pearson, ratio_interval  # noqa: E402
from effzoo.shard_io import read_datalist  # noqa: E402
from effzoo.steps.predict import predict  # noqa: E402

INT8 = ("ov_int8_percentile", "ov_int8_kl_divergence")


def build(work: Path, variants: list[str]) -> None:
    """fp32 (every run's reference), ov_fp32, ov_bf16 and the OpenVINO int8 builds of each variant, scored on the
    sample (metrics/<variant>.json)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["imagenet-sample-500"] = {"root": str(SAMPLE)}
    cfg.update(dataset="imagenet-sample-500", run_variants=variants, run_quant=["fp32", "ov_fp32", "ov_bf16", *INT8])
    cfg["calibration"] = {"dataset": "demo"}
    cfg["benchmark"] = {"enabled": False}
    for v in variants:
        if cfg["variants"][v]["weights"] == "hub":
            cfg["variants"][v]["weights"] = "random"   # no B0..B8 weights offline: speed only
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "snakemake", *[f"metrics/{v}.json" for v in variants], "-s",
                    str(REPO / "Snakefile"), "-d", str(work), "--cores", "2", "--quiet", "rules", "--rerun-incomplete",
                    "--configfile", str(work / "config.yaml")], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def top1_by_file(csv_path: Path) -> dict[str, tuple[int, int]]:
    """{image file: (label, top-1 class)} of a predictions CSV."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return {r["file"]: (int(r["label"]), int(r["top1"])) for r in csv.DictReader(fh)}


def pct(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{100 * k / n:5.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


ENGINES = {"ov_fp32 @f32": ("ov_fp32", "f32"), "ov_bf16 @bf16": ("ov_bf16", "bf16"),
           **{f"{q} @{p}": (q, p) for q in INT8 for p in ("f32", "bf16")}}   # name: (build, inference precision)


def accuracy_report(work: Path, variant: str, a) -> None:
    """Top-1 and agreement with ov_fp32 of every engine on the sample; an engine the workflow did not run as such
    (an int8 build at bf16; every engine with AMX refused) predicts the sample here."""
    m = json.loads((work / f"metrics/{variant}.json").read_text())
    datalist = work / m["dataset"]["datalist"]
    shards = [str(datalist.parent / s) for s in dict.fromkeys(r[0] for r in read_datalist(str(datalist)))]
    preds = {}
    for name, (q, precision) in ENGINES.items():
        if not a.amx_refused and (precision == "f32" or q == "ov_bf16"):   # as the workflow predicted them
            preds[name] = top1_by_file(work / f"output/{variant}-{q}/predictions.csv")
            continue
        out = work / ("no-amx" if a.amx_refused else "bf16-remainder") / f"{variant}-{q}-{precision}"
        out.mkdir(parents=True, exist_ok=True)
        predict(str(work / f"vacc/{variant}-{q}/model.xml"), shards, str(out / "predictions.csv"),
                str(out / "logits.npy"), a.batch, 2, precision=precision)
        preds[name] = top1_by_file(out / "predictions.csv")
    ref = preds["ov_fp32 @f32"]
    n = len(ref)
    weights = "random init: top-1 of an untrained model" if m["random_weights"] else "trained"
    print(f"\n{variant} on the 500-image sample ({n} images scored; weights {weights})")
    print(f"{'engine':28s} {'top-1 % [95%]':>22s} {'agreement with ov_fp32 % [95%]':>32s}")
    for name, p in preds.items():
        if set(p) != set(ref):
            raise SystemExit(f"{name}: scored other images than ov_fp32")
        top1 = sum(lab == t for lab, t in p.values())
        agree = sum(p[f][1] == ref[f][1] for f in ref)
        print(f"{name:28s} {pct(top1, n):>22s} {pct(agree, n):>32s}")
    for q in INT8:
        same = sum(preds[f"{q} @bf16"][f][1] == preds[f"{q} @f32"][f][1] for f in ref)
        print(f"{q}: remainder at bf16 agrees with it at f32 on {pct(same, n)} %")


def over(res: dict, name: str, ref: str) -> str:
    """name's paired speed over ref's: geometric mean of the per-round ratios with its 95% interval."""
    if ref == name:
        return ""
    g, lo, hi = ratio_interval([e / b for e, b in zip(res[name]["throughput_rounds"], res[ref]["throughput_rounds"])])
    return f"{g:.2f}x [{lo:.2f}, {hi:.2f}]"


def speed_report(work: Path, variant: str, a) -> None:
    """Every engine timed in one interleaved run; each over the same graph at f32 and over ov_fp32."""
    runners = {}
    for name, (q, precision) in ENGINES.items():
        runners[name], info = runtime.open_build(str(work / f"vacc/{variant}-{q}/model.xml"), 2, precision=precision)
        if info["inference_precision"] != precision:
            raise SystemExit(f"{name}: OpenVINO compiled it at {info['inference_precision']}")
    size = json.loads((work / f"vacc/{variant}-ov_fp32/build.json").read_text())["preprocess"]["input_size"][1]
    x = np.random.default_rng(0).integers(0, 256, (a.batch, size, size, 3), dtype=np.uint8)
    res = speed.measure(runners, x, a.batch, a.iterations, 2, a.rounds, Progress(a.rounds * len(runners), variant))
    print(f"speed: batch {a.batch}, 2 threads, {a.rounds} interleaved rounds x {a.iterations} calls, load average "
          f"{os.getloadavg()}")
    print(f"{'engine':28s} {'img/s':>8s}  {'over the same graph at f32 [95%]':>34s}  {'over ov_fp32 [95%]':>22s}")
    for name, (q, _) in ENGINES.items():
        same_graph = "ov_fp32 @f32" if q == "ov_bf16" else f"{q} @f32"
        print(f"{name:28s} {res[name]['throughput_ips']:8.1f}  {over(res, name, same_graph):>34s}  "
              f"{over(res, name, 'ov_fp32 @f32'):>22s}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["efficientnet_b0", "tf_efficientnet_lite0"])
    ap.add_argument("--workdir", default=str(REPO / "bench-out" / "bf16-remainder"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--no-amx", action="store_true", help="refuse AMX to OpenVINO (AVX512_BF16 / VNNI kernels)")
    ap.add_argument("--amx-refused", help=argparse.SUPPRESS)   # the child of --no-amx: where the shim logs
    a = ap.parse_args()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f in ("avx_vnni", "avx2"))
    print(f"CPU {cpu_name()}, flags {' '.join(flags)}")
    if bf16_isa() is None:
        raise SystemExit("this CPU has neither avx512_bf16 nor amx_bf16: OpenVINO would not compute bf16 here")
    work = Path(a.workdir).resolve()
    if a.no_amx:
        build(work, a.variants)
        with tempfile.TemporaryDirectory() as td:
            log = str(Path(td) / "refused.log")
            argv = [arg for arg in sys.argv[1:] if arg != "--no-amx"]
            subprocess.run([sys.executable, __file__, *argv, "--amx-refused", log], check=True,
                           env={**os.environ, "LD_PRELOAD": noamx_shim(td), "NOAMX_LOG": log})
            if not Path(log).exists():
                raise SystemExit("AMX was never requested, so nothing was refused: the run above used the default "
                                 "kernels")
        print("AMX was refused: the figures above ran on AVX512_BF16 and AVX-512 VNNI kernels")
        return
    if not a.amx_refused:
        build(work, a.variants)
    for v in a.variants:
        accuracy_report(work, v, a)
        speed_report(work, v, a)


if __name__ == "__main__":
    main()
