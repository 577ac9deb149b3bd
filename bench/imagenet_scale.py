"""ImageNet-scale DAG: 50,000 validation images x all nine vendor variants x every quant mode.

Builds a 50,000-image ILSVRC-layout val set of symlinks to the 500 real sample images (100 each, labels
kept), then measures, each in its own snakemake process:
  1. `snakemake -n` for everything (after the dataset index checkpoint ran, so the DAG is complete);
  2. `snakemake -n` with everything up to date (every planned output created empty, then `snakemake --touch`
     marked them complete in DAG order, as a finished run leaves them);
  3. optionally (--preprocess) the real preprocessing of all 50,000 images at 224 (one geometry) on this
     machine's cores, as shard jobs through the workflow.

It first prints whether Slurm's client is configured and its controller reachable: snakemake's Slurm plugin
probes it at every start-up (9 s a call when a configured controller is down), so read the times with it.

usage: python bench/imagenet_scale.py [--workdir bench-out/scale] [--images 50000] [--preprocess]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "imagenet-sample-500"


def make_dataset(root: Path, n: int) -> None:
    if (root / "val_label.txt").exists() and len((root / "val_label.txt").read_text().splitlines()) == n:
        return
    (root / "val").mkdir(parents=True, exist_ok=True)
    src = [ln.split() for ln in (SAMPLE / "val_label.txt").read_text().splitlines()]
    lines = []
    for i in range(n):
        name, label = src[i % len(src)]
        dst = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        p = root / "val" / dst
        if not p.exists():
            p.symlink_to(SAMPLE / "val" / name)
        lines.append(f"{dst} {label}\n")
    (root / "val_label.txt").write_text("".join(lines))
    (root / "label.txt").write_text((SAMPLE / "label.txt").read_text())


def snakemake(work: Path, cfg: Path, *args: str) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
                           "--configfile", str(cfg), "--cores", "2", *args], capture_output=True, text=True)
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return dt, proc.stdout + proc.stderr


def slurm_client_status() -> str:
    """Whether Slurm's client is configured and its controller answers: snakemake's Slurm plugin runs
    `scontrol show config` at every start-up, which waits 9 s when a configured controller is down."""
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if not shutil.which("scontrol"):
        return "Slurm client: not installed (the plugin's start-up probe fails at once)"
    if not Path(conf).exists():
        return f"Slurm client: installed, no {conf} (the plugin's start-up probe fails at once)"
    t0 = time.monotonic()
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15).stdout.strip()
    except subprocess.TimeoutExpired:
        ping = "no answer in 15 s"
    state = "reachable" if "UP" in ping else "NOT reachable"
    return (f"Slurm client: configured ({conf}), controller {state} ({ping or 'no answer'}; {time.monotonic() - t0:.1f} s)"
            + ("" if "UP" in ping else ": every snakemake call waits for the plugin's probe (README, cluster)"))


def touch_all(work: Path, cfg_path: Path) -> int:
    """Make every planned output exist and look up to date without computing it: create each (empty), then
    `snakemake --touch` gives them DAG-consistent times, as a finished run leaves them. Returns the count."""
    _, out = snakemake(work, cfg_path, "-n", "--printshellcmds")
    outputs = set()
    for line in out.splitlines():
        if line.strip().startswith("output:"):
            outputs.update(x.strip() for x in line.split(":", 1)[1].split(","))
    for o in outputs:
        path = work / o
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            if path.suffix:
                path.touch()
            else:  # a directory() output (deploy/<variant>, the demo's val/)
                path.mkdir()
    snakemake(work, cfg_path, "--touch")
    return len(outputs)


def scale_config(work: Path, all_modes: bool = False) -> Path:
    """Config of the ImageNet-scale DAG: the nine vendor variants (random weights) x the five ONNX Runtime quant
    modes (the DAG the dry-run bars were set on), or x every configured mode (OpenVINO's too)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["imagenet"] = {"root": str(work / "imagenet-val")}
    cfg["dataset"] = "imagenet"
    cfg["run_variants"] = [f"efficientnet_b{i}" for i in range(9)]
    cfg["run_quant"] = [q for q, o in cfg["quant_modes"].items() if all_modes or o.get("runtime", "onnxruntime")
                        == "onnxruntime"]
    for v in cfg["run_variants"]:
        cfg["variants"][v]["weights"] = "random"
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path


def clean_outputs(work: Path) -> None:
    """Remove the outputs (placeholders) of a previous run of a benchmark."""
    for d in ("onnx", "vacc", "calib", "output", "metrics", "perf", "reports", "logs", "benchmarks", "npz",
              ".snakemake"):
        shutil.rmtree(work / d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="bench-out/scale")
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--preprocess", action="store_true")
    ap.add_argument("--all-modes", action="store_true", help="every configured quant mode, OpenVINO's too")
    a = ap.parse_args()
    print(slurm_client_status())
    work = (REPO / a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    make_dataset(work / "imagenet-val", a.images)
    clean_outputs(work)
    cfg_path = scale_config(work, a.all_modes)
    dt, _ = snakemake(work, cfg_path, "npz/imagenet/index.tsv")
    print(f"dataset index of {a.images} images: {dt:.1f} s")
    dt, out = snakemake(work, cfg_path, "-n", "--quiet", "rules")
    total = [ln.split()[1] for ln in out.splitlines() if ln.startswith("total")]
    print(f"dry run, everything to do: {dt:.1f} s ({total[0] if total else '?'} jobs)")
    if a.preprocess:
        geom = "224-r256-bicubic"
        n_shards = -(-a.images // yaml.safe_load(cfg_path.read_text())["preprocessing"]["shard_size"])
        dt, _ = snakemake(work, cfg_path, f"npz/imagenet/{geom}/datalist.tsv")
        print(f"preprocessing {a.images} images at 224 ({n_shards} shards, {os.cpu_count()} cores): {dt:.0f} s "
              f"= {a.images / dt:.0f} images/s")
    t0 = time.monotonic()
    n = touch_all(work, cfg_path)
    print(f"created and --touched {n} planned outputs: {time.monotonic() - t0:.1f} s")
    dt, out = snakemake(work, cfg_path, "-n")
    print(f"dry run, everything up to date: {dt:.1f} s ({'nothing to be done' if 'Nothing to be done' in out else 'JOBS PLANNED'})")


if __name__ == "__main__":
    main()
