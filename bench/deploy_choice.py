"""Does deploy's choice hold? The demo's race rerun 10 times, each pick checked against a separate verification race.

Runs the demo (the default job) once in a work folder (skipped when it already holds race/<variant>.json). Then,
in this process, reruns the race step `--reruns` times with the config's defaults (effzoo.steps.race.race: the
candidates interleaved, rounds added while a build is unresolved, effzoo.decision.decide) and prints each rerun's
pick, its rounds and the pick's paired ratio to the leader. Then a separate verification race times the same
candidates `--verify-rounds` rounds (the same harness, batch and threads) and prints each build's median images/s;
each rerun's pick is then within the tolerance when its verification speed is at least (1 - speed_tolerance) x the
fastest candidate's. Last, the spread of the per-round log ratios to the leader (their standard deviation per
build, pooled over the reruns): the noise a race's interval is made of, which the default tolerance is chosen
against.

usage: python bench/deploy_choice.py [--work DIR] [--reruns 10] [--verify-rounds 20]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _workflow import REPO, resolved_config

sys.path.insert(0, str(REPO))
from effzoo import speed  # noqa: E402
from effzoo.cpu_target import REPORTED_FLAGS, cpu_flags, cpu_name  # noqa: E402
from effzoo.runtime import open_build  # noqa: E402
from effzoo.steps.race import race  # noqa: E402

VARIANT = "tf_efficientnet_lite0"


def demo(work: Path) -> None:
    """The default job in `work`, unless it already ran there."""
    if (work / f"race/{VARIANT}.json").exists():
        return
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def verification(work: Path, builds: dict, candidates: list[str], settings: dict, rounds: int) -> dict:
    """{build: median images/s} of the candidates timed together in `rounds` interleaved rounds."""
    runners = {}
    for q in candidates:
        model = work / f"vacc/{VARIANT}-{q}" / Path(builds[q]["model"]["path"]).name
        runners[q] = open_build(str(model), settings["threads"])[0]
    size = builds[candidates[0]]["preprocess"]["input_size"][1]
    x = np.random.default_rng(1).integers(0, 256, (settings["batch"], size, size, 3), dtype=np.uint8)
    timed = speed.measure(runners, x, settings["batch"], settings["iterations"], settings["warmup"], rounds)
    return {q: t["throughput_ips"] for q, t in timed.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="work folder (default: a new temporary folder)")
    ap.add_argument("--reruns", type=int, default=10)
    ap.add_argument("--verify-rounds", type=int, default=20)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="effzoo-deploy-choice-"))
    print(f"{cpu_name()}; flags {' '.join(sorted(cpu_flags() & REPORTED_FLAGS))}; work folder {work}")
    t0 = time.monotonic()
    demo(work)
    print(f"demo run: {time.monotonic() - t0:.0f} s")
    cfg = resolved_config()
    dep, bench = cfg["deploy"], cfg["benchmark"]
    settings = {"objective": dep["objective"], "batch": max(bench["batch_sizes"]), "threads": bench["threads"],
                "tolerance": dep["speed_tolerance"], "require": dep["require"], "max_builds": dep["race"]["max_builds"],
                **{k: dep["race"][k] for k in ("rounds", "looks", "iterations", "warmup")}}
    order = cfg["run_quant"]
    metrics = json.loads((work / f"metrics/{VARIANT}.json").read_text())
    jsons = {q: str(work / f"vacc/{VARIANT}-{q}/build.json") for q in order}
    builds = {q: json.loads(Path(p).read_text()) for q, p in jsons.items()}
    picks, logs = [], {}
    print(f"\n{'rerun':>5s}  {'pick':24s} {'leader':24s} {'rounds':>6s}  pick / leader [95%]   race s")
    for i in range(a.reruns):
        t0 = time.monotonic()
        doc = race(metrics, builds, jsons, settings)
        d = doc["decision"]
        r = d["builds"][d["chosen"]]["speed_over_leader"]
        picks.append(d["chosen"])
        lead = doc["builds"][d["leader"]]["throughput_rounds"]
        for q, b in doc["builds"].items():
            if q != d["leader"]:
                logs.setdefault(q, []).append([math.log(x / y) for x, y in zip(b["throughput_rounds"], lead)])
        print(f"{i + 1:5d}  {d['chosen']:24s} {d['leader']:24s} {doc['rounds']:6d}  {r[0]:.3f} [{r[1]:.3f}, "
              f"{r[2]:.3f}]  {time.monotonic() - t0:6.0f}")
    candidates = list(doc["builds"])
    check = verification(work, builds, candidates, settings, a.verify_rounds)
    fastest = max(check, key=check.get)
    print(f"\nverification race ({a.verify_rounds} rounds, {settings['iterations']} calls of batch "
          f"{settings['batch']} a round, {settings['threads']} threads): median images/s")
    for q in sorted(check, key=check.get, reverse=True):
        print(f"  {q:24s} {check[q]:8.1f}  {check[q] / check[fastest]:.3f}x the fastest")
    within = [check[p] >= (1 - settings["tolerance"]) * check[fastest] for p in picks]
    print(f"\npicks within {settings['tolerance']:.0%} of the verification race's fastest ({fastest}): "
          f"{sum(within)} of {len(picks)}; picks: {', '.join(f'{p} ({check[p] / check[fastest]:.3f})' for p in picks)}")
    print("\nper-round noise of the ratio to the leader (sd of log ratios within a race, median over reruns):")
    for q, runs in logs.items():
        sds = [float(np.std(r, ddof=1)) for r in runs if len(r) > 1]
        print(f"  {q:24s} {100 * float(np.median(sds)):5.1f}%  ({len(sds)} races)")


if __name__ == "__main__":
    main()
