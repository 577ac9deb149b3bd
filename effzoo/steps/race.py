"""race/<variant>.json: a variant's candidate builds timed in one process, and the deploy decision made on them.

The candidates are the builds that ran where they were scored, that the accuracy evidence (metrics) does not refute
and that this CPU runs: its kind and flags (effzoo.decision.race_candidates; a bf16 build needs bf16). Each is
opened exactly as `effzoo.load` opens a deploy folder: its own runtime (OpenVINO at the build's inference
precision), latency mode, no layout pass, the benchmark's threads, and the objective's batch:
  * `batch`: the largest benchmark batch, ranked on images/s;
  * `single_stream`: batch 1, ranked on the 90th-percentile latency of each round's calls (MLPerf's single stream).
They run interleaved in rotating order (effzoo.speed.measure, the benchmark's harness), `rounds` rounds per look.
After each look effzoo.decision.decide is run on every round so far; while a pool build is unresolved against the
leader and looks remain, the race adds `rounds` more. Speeds exclude preprocessing; the file records the exact
preprocessing path's speed beside them, the CPU the race ran on, the runtimes' versions and the decision.

CLI: python -m race --variant V --metrics metrics/V.json --build fp32 vacc/V-fp32/build.json [--build ...] \
        --objective batch --batch 16 --threads 2 --iterations 3 --warmup 1 --rounds 5 --looks 3 \
        --tolerance 0.05 --require not_refuted [--max-builds 5] --out race/V.json
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image

from effzoo import fingerprint, preprocess, speed
from effzoo.common import LOG, Progress, ZooError, read_json, write_json
from effzoo.cpu_target import REPORTED_FLAGS, cpu_flags, cpu_kind, cpu_name, kernel_isa
from effzoo.decision import decide, ratio, race_candidates
from effzoo.runtime import checked_build, open_build, precision_of


def preprocessing_speed(spec: dict, images: int = 8) -> float:
    """Images/s of the exact preprocessing path (effzoo.load's: PIL resize and centre crop of a decoded 500 x 375
    photo; decoding not included), on one thread."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    preprocess.transform_uint8(photo, spec)
    t0 = time.perf_counter()
    for _ in range(images):
        preprocess.transform_uint8(photo, spec)
    return images / (time.perf_counter() - t0)


def within_memory(candidates: list[str], left_out: dict, results: dict, max_builds: int | None) -> tuple[list, dict]:
    """At most `max_builds` candidates: fp32 and the fastest others by their own benchmark (images/s in the deploy
    mode); the rest are left out, with the reason."""
    if not max_builds or len(candidates) <= max_builds:
        return candidates, left_out
    own = {q: (results[q].get("speed") or {}).get("images_per_s", 0.0) for q in candidates}
    keep = {"fp32"} | set(sorted((q for q in candidates if q != "fp32"), key=lambda q: -own[q])[:max_builds - 1])
    for q in candidates:
        if q not in keep:
            left_out[q] = (f"not among the {max_builds} builds the race has memory for (deploy.race.max_builds): "
                           f"{own[q]:.1f} images/s in its own benchmark")
    return [q for q in candidates if q in keep], left_out


def figures(timed: dict, objective: str) -> dict:
    """{build: per-round figures, higher is faster}: images/s, or 1 / the round's p90 latency (single stream)."""
    if objective == "single_stream":
        return {q: [1000.0 / ms for ms in t["latency_p90_rounds"]] for q, t in timed.items()}
    return {q: list(t["throughput_rounds"]) for q, t in timed.items()}


ROUND_FIGURES = ("throughput_rounds", "latency_p90_rounds")


def merge(into: dict, more: dict) -> dict:
    """The per-round figures of a race's looks so far, with one more look's added."""
    for q, t in more.items():
        for key in ROUND_FIGURES:
            into.setdefault(q, {}).setdefault(key, []).extend(t[key])
    return into


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def int8_payoff(raced: dict, builds: dict, cpu: dict) -> dict:
    """Per runtime, whether its raced int8 builds pay on this CPU: each one's paired speed over the fp32 build of
    its runtime against its own floor (min_speed_over_fp32), and a statement when some are confidently below it
    (the interval's upper end under the floor): 'does not pay' when all are."""
    out: dict = {}
    for q, b in raced.items():
        floor, own = builds[q]["options"].get("min_speed_over_fp32"), b.get("speed_over_runtime_fp32")
        if builds[q]["kind"] != "int8" or not floor or not own:
            continue
        entry = out.setdefault(b["runtime"]["package"], {"fp32": own["build"], "builds": {}})
        entry["builds"][q] = {"speed_over_runtime_fp32": own["ratio"], "floor": floor,
                              "below_floor": own["ratio"][2] < floor}
    for package, entry in out.items():
        below = [q for q, e in entry["builds"].items() if e["below_floor"]]
        entry["pays"] = not below
        if below:
            name = RUNTIME_NAMES.get(package, package)
            lead = (f"{name} int8 does not pay on this CPU" if len(below) == len(entry["builds"])
                    else f"{name} int8 pays only in part on this CPU")
            ratios = {q: entry["builds"][q]["speed_over_runtime_fp32"] for q in below}
            entry["statement"] = (f"{lead} ({cpu['kind']}, {cpu['kernel_isa']} kernels; flags "
                                  f"{' '.join(cpu['flags']) or 'none of the reported'}): "
                                  + ", ".join(f"{q} {r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]" for q, r in ratios.items())
                                  + f" {entry['fp32']}, below the {entry['builds'][below[0]]['floor']}x floor "
                                    f"(min_speed_over_fp32; 95% intervals of this race)")
    return out


def raced_builds(candidates: list, timed: dict, per_round: dict, opened: dict, builds: dict, looks: int) -> dict:
    """Per raced build: its runtime, precision, speed figures round by round, and its paired speed ratios over the
    ONNX Runtime fp32 build (speed_over_ort_fp32) and over its own runtime's fp32 build (speed_over_runtime_fp32),
    each [median, 95% low, 95% high]."""
    ref = {opened[q]["runtime"]: q for q in reversed(candidates) if builds[q]["kind"] == "fp32"}
    raced = {}
    for q in candidates:
        t = timed[q]
        raced[q] = {"runtime": {"package": opened[q]["runtime"], "version": opened[q]["version"]},
                    "kind": builds[q]["kind"], "inference_precision": opened[q].get("inference_precision"),
                    "images_per_s": round(median(t["throughput_rounds"]), 2),
                    "latency_p90_ms": round(median(t["latency_p90_rounds"]), 3),
                    "throughput_rounds": t["throughput_rounds"], "latency_p90_rounds": t["latency_p90_rounds"]}
        if "fp32" in per_round:
            raced[q]["speed_over_ort_fp32"] = [round(v, 4) for v in ratio(per_round, q, "fp32", looks)]
        own = ref.get(opened[q]["runtime"])
        if own is not None:
            raced[q]["speed_over_runtime_fp32"] = {"build": own,
                                                  "ratio": [round(v, 4) for v in ratio(per_round, q, own, looks)]}
    return raced


def race(metrics: dict, builds: dict, build_jsons: dict, settings: dict) -> dict:
    """Time the candidates and decide; returns the race document."""
    results = metrics["results"]
    not_run = {q: f"not run where it was scored: {results[q]['not_run']}" for q in builds if "not_run" in results[q]}
    order = [q for q in builds if q not in not_run]
    evidence = {q: results[q]["evidence"] for q in order}
    running = cpu_kind()
    candidates, left_out = race_candidates(evidence, {q: b["cpu"] for q, b in builds.items()}, running, cpu_flags(),
                                           order)
    candidates, left_out = within_memory(candidates, {**not_run, **left_out}, results, settings.get("max_builds"))
    if not candidates:
        raise ZooError(f"{metrics['variant']}: no build to race on this {running} CPU: " +
                       "; ".join(f"{q}: {w}" for q, w in left_out.items()))
    objective = settings["objective"]
    batch = 1 if objective == "single_stream" else settings["batch"]
    runners, opened = {}, {}
    for q in candidates:
        checked_build(build_jsons[q])   # files against their sha256, this CPU against the build's requirement
        model = str(Path(build_jsons[q]).parent / Path(builds[q]["model"]["path"]).name)
        runners[q], opened[q] = open_build(model, settings["threads"], precision=precision_of(builds[q]))
    size = builds[candidates[0]]["preprocess"]["input_size"][1]
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    looks, per_look = settings["looks"], settings["rounds"]
    progress = Progress(looks * per_look * len(candidates), f"race {metrics['variant']}")
    timed, decision, done = {}, None, 0
    load_before, ticks = os.getloadavg(), speed.cpu_ticks()
    for look in range(looks):
        part = speed.measure(runners, x, batch, settings["iterations"], settings["warmup"] if look == 0 else 0,
                             per_look, progress, first_round=done)
        timed, done = merge(timed, part), done + per_look
        decision = decide(evidence, figures(timed, objective), order, settings["tolerance"], settings["require"],
                          looks)
        if not decision.get("unresolved"):
            break
    raced = raced_builds(candidates, timed, figures(timed, objective), opened, builds, looks)
    steal = speed.steal_percent(ticks, speed.cpu_ticks())
    cpu = {"model": cpu_name(), "kind": running, "kernel_isa": kernel_isa(),
           "flags": sorted(cpu_flags() & REPORTED_FLAGS), "cores": os.cpu_count()}
    return {"variant": metrics["variant"], "objective": objective, "batch": batch, "threads": settings["threads"],
            "iterations": settings["iterations"], "warmup": settings["warmup"], "rounds": done,
            "rounds_per_look": per_look, "looks_max": looks, "looks": done // per_look,
            "ranked_on": "images/s" if objective == "batch" else "1 / p90 latency of each round's calls",
            "speed_excludes_preprocessing": True,
            "preprocessing": {"path": "exact (PIL resize and centre crop, as effzoo.load runs it)",
                              "images_per_s_one_thread": round(preprocessing_speed(metrics["preprocess"]), 1)},
            "layout_tuning": "off (as effzoo.load runs a build)",
            "cpu": cpu, "int8_payoff": int8_payoff(raced, builds, cpu),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpu_steal_pct": steal,
            "accuracy": {q: evidence[q] for q in order}, "left_out": left_out, "builds": raced,
            "decision": decision, "provenance": fingerprint.provenance("race"),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--build", nargs=2, action="append", required=True, metavar=("QUANT", "BUILD_JSON"),
                    help="every build, in run_quant order (the order that breaks a tie of speed and evidence)")
    ap.add_argument("--objective", choices=["batch", "single_stream"], required=True)
    ap.add_argument("--batch", type=int, required=True, help="the batch of the batch objective")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--iterations", type=int, required=True, help="calls per build and round")
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--rounds", type=int, required=True, help="rounds per look")
    ap.add_argument("--looks", type=int, required=True, help="looks at most (each adds --rounds rounds)")
    ap.add_argument("--tolerance", type=float, required=True)
    ap.add_argument("--require", choices=["not_refuted", "certified"], required=True)
    ap.add_argument("--max-builds", type=int, default=None, help="race fp32 and the fastest others by their own "
                    "benchmark, this many in all (memory)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    build_jsons = dict(a.build)
    builds = {q: read_json(p, "build") for q, p in build_jsons.items()}
    doc = race(read_json(a.metrics, "metrics"), builds, build_jsons,
               {"objective": a.objective, "batch": a.batch, "threads": a.threads, "iterations": a.iterations,
                "warmup": a.warmup, "rounds": a.rounds, "looks": a.looks, "tolerance": a.tolerance,
                "require": a.require, "max_builds": a.max_builds})
    d = doc["decision"]
    LOG.info("race %s on %s: %s (%s)%s", a.variant, doc["cpu"]["kind"], d["chosen"], d["pool"],
             f"; {d['note']}" if d.get("note") else "")
    write_json(a.out, doc)
