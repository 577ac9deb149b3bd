"""Does deploy's choice hold when the demo's benchmarks are run again? Raw images/s against speed over PyTorch.

Runs the demo (the default job) once in a work folder, then reruns every benchmark job `--repeats` times
(`snakemake --forcerun benchmark`, which also redoes metrics, summary and deploy). For each repeat it prints:
  * each build's images/s in the deploy mode (latency mode, batch 16, 2 threads) and its speed over PyTorch eager
    timed round by round beside it in the same job (what metrics, the summary and deploy now use);
  * the build deploy chose, and the build a ranking on raw images/s (the best over every batch and mode, the rule
    deploy used before) would have chosen.
Then, per build, the spread over the repeats (max / min - 1) of both figures, and of each build's speed over the
fp32 build of its runtime computed both ways: the smaller spread is the figure that cancels the machine's drift
between benchmark jobs.

usage: python bench/deploy_choice.py [--work DIR] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANT = "tf_efficientnet_lite0"
BUDGET = {"min_agreement": 0.98, "max_top1_loss": 0.005}
sys.path.insert(0, str(REPO))


def cpu_flags() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split())
    return " ".join(sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"}))


def snakemake(work: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def old_choice(results: dict) -> str:
    """The rule deploy used before: the highest raw best throughput (any batch, any mode) within the budget."""
    from effzoo.budget import within_budget

    ok = {q: r["best_throughput_ips"] for q, r in results.items() if within_budget(q, results, BUDGET)}
    return max(ok, key=ok.get)


def spread(values: list[float]) -> str:
    return f"{100 * (max(values) / min(values) - 1):5.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="work folder (default: a new temporary folder)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="effzoo-deploy-choice-"))
    print(f"CPU flags: {cpu_flags()}; work folder {work}")
    t0 = time.monotonic()
    snakemake(work)
    print(f"demo run: {time.monotonic() - t0:.0f} s")
    runs = []
    for rep in range(a.repeats):
        if rep:
            snakemake(work, "--forcerun", "benchmark")
        m = json.loads((work / f"metrics/{VARIANT}.json").read_text())
        deployed = json.loads((work / f"deploy/{VARIANT}/model.json").read_text())
        chosen = deployed["quant"]
        runs.append((m["results"], chosen, old_choice(m["results"])))
        print(f"\nrepeat {rep + 1}: deploy chose {chosen} (tied with {deployed['speed']['tied_with']}); raw best "
              f"throughput would choose {runs[-1][2]}")
        print(f"  {'build':24s} {'images/s':>9s} {'x PyTorch':>9s} {'best any mode':>13s}")
        for q, r in m["results"].items():
            print(f"  {q:24s} {r['speed']['images_per_s']:9.1f} {r['speed']['vs_torch_eager']:9.2f} "
                  f"{r['best_throughput_ips']:13.1f}")
    print(f"\nspread over {a.repeats} repeats (max/min - 1): images/s | x PyTorch | over its runtime's fp32: "
          f"raw | normalized")
    for q in runs[0][0]:
        ref = "ov_fp32" if runs[0][0][q]["runtime"] == "openvino" else "fp32"
        raw = [r[q]["speed"]["images_per_s"] / r[ref]["speed"]["images_per_s"] for r, _, _ in runs]
        norm = [r[q]["speed"]["vs_torch_eager"] / r[ref]["speed"]["vs_torch_eager"] for r, _, _ in runs]
        print(f"  {q:24s} {spread([r[q]['speed']['images_per_s'] for r, _, _ in runs])} "
              f"{spread([r[q]['speed']['vs_torch_eager'] for r, _, _ in runs])} {spread(raw)} {spread(norm)}")
    print(f"\ndeploy's choice per repeat: {[c for _, c, _ in runs]}; held: {len({c for _, c, _ in runs}) == 1}")
    print(f"raw-throughput choice per repeat: {[o for _, _, o in runs]}; held: {len({o for _, _, o in runs}) == 1}")


if __name__ == "__main__":
    main()
