"""No-op `snakemake -n` time: the demo, and the ImageNet-scale DAG (50,000 images x 9 variants x 5 modes, or
every configured mode with --all-modes).

Both workdirs are made up to date without computing anything (bench/imagenet_scale.py's touch_all), then
each no-op dry run is timed `--repeat` times in a fresh snakemake process. `--cycle-local-slurm` first
starts and stops the local Slurm (tests/slurm/local_slurm.sh), the state CI leaves a machine in; the Slurm
client status printed first says whether the Slurm plugin's start-up probe can cost its 9 s.

usage: python bench/dry_run_time.py [--cycle-local-slurm] [--repeat 3] [--images 50000]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from imagenet_scale import REPO, clean_outputs, make_dataset, scale_config, slurm_client_status, snakemake, touch_all


def cpu_flags() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split())
    return " ".join(sorted(flags & {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"}))


def demo_config(work: Path) -> Path:
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(yaml.safe_load((REPO / "config.yaml").read_text())))
    return cfg_path


def noop_times(work: Path, cfg_path: Path, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        dt, out = snakemake(work, cfg_path, "-n")
        if "Nothing to be done" not in out:
            raise SystemExit(f"{work}: the dry run planned jobs; the workdir is not up to date:\n{out[-2000:]}")
        times.append(dt)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="bench-out/dry-run")
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cycle-local-slurm", action="store_true")
    ap.add_argument("--all-modes", action="store_true", help="ImageNet scale with every configured quant mode")
    a = ap.parse_args()
    if a.cycle_local_slurm:
        for cmd in ("start", "stop"):
            subprocess.run(["bash", str(REPO / "tests/slurm/local_slurm.sh"), cmd], check=True,
                           stdout=subprocess.DEVNULL)
    print(f"CPU flags: {cpu_flags()}")
    print(slurm_client_status())
    root = (REPO / a.workdir).resolve()
    demo, scale = root / "demo", root / "scale"
    for work in (demo, scale):
        work.mkdir(parents=True, exist_ok=True)
        clean_outputs(work)
    demo_cfg = demo_config(demo)
    snakemake(demo, demo_cfg, "data/demo/val_label.txt")
    touch_all(demo, demo_cfg)
    make_dataset(scale / "imagenet-val", a.images)
    scale_cfg = scale_config(scale, a.all_modes)
    n_modes = len(yaml.safe_load(scale_cfg.read_text())["run_quant"])
    snakemake(scale, scale_cfg, "npz/imagenet/index.tsv")
    touch_all(scale, scale_cfg)
    for name, work, cfg, bar in (("demo", demo, demo_cfg, 3.0),
                                 (f"ImageNet scale ({a.images} images x 9 variants x {n_modes} modes)", scale,
                                  scale_cfg, 5.0)):
        t = noop_times(work, cfg, a.repeat)
        print(f"no-op snakemake -n, {name}: median {statistics.median(t):.2f} s "
              f"(runs {', '.join(f'{x:.2f}' for x in t)}; bar {bar:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
