"""What the full zoo costs: measure every stage's cost per architecture, project the full run, check a real run.

  measure  runs the workflow (random weights) for each variant over a handful of real sample images and records,
           from the jobs' own benchmark files and manifests, every stage's fixed cost, per-image cost and peak
           memory, plus the parallel fraction of inference between 1 and 2 threads: the cost file the workflow
           sizes its jobs from (effzoo/zoo_cost.json by default).
  project  prints the full run from a cost file: core-hours per stage and variant, predict parts, peak memory
           per job, disk per geometry and the wall time on K nodes of C cores.
  check    compares a finished run's job times (benchmarks/*.tsv) with what the cost file projects for them.
  disk     measures compact shard storage (zlib, and the workflow's PNG storage) against the plain shards: size
           ratio, write and read speed, exactness; --update records the PNG figures in the cost file.

usage: python tools/zoo_cost.py measure [--variants efficientnet_b0 ...] [--images 16] [--out effzoo/zoo_cost.json]
       python tools/zoo_cost.py project [--images 50000] [--nodes 4 --cores 32] [--threads 2]
       python tools/zoo_cost.py check --workdir RUN [--configfile RUN/config.yaml]
       python tools/zoo_cost.py disk [--images 200] [--update]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from snakemake.utils import update_config, validate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _workflow import SAMPLE, calibrate_args, resolved_config  # noqa: E402

sys.path.insert(0, str(REPO))
from effzoo import cost, preprocess, shard_io  # noqa: E402
from effzoo.cpu_target import cpu_kind  # noqa: E402
from effzoo.ort_session import open_session  # noqa: E402

B_SERIES = [f"efficientnet_b{i}" for i in range(9)]
MEASURED_QUANT = {"fp32": "onnxruntime-fp32", "fp16": "onnxruntime-fp16", "int8_percentile": "onnxruntime-int8",
                  "ov_fp32": "openvino-fp32", "ov_int8_percentile": "openvino-int8"}
BENCH_MEASURED = {"batch_sizes": [1, 4], "iterations": 1, "warmup": 1, "rounds": 1, "threads": 2, "instances": 1}
SHARD_PARALLEL = 0.95   # shard jobs decode in worker processes: near-linear in workers
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_flags() -> list[str]:
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in FLAGS if f in words]


def cpu_line() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags {' '.join(cpu_flags())}"


def make_dataset(root: Path, n: int) -> None:
    """n real sample images (links), one per class, in the ILSVRC layout."""
    (root / "val").mkdir(parents=True, exist_ok=True)
    lines = (SAMPLE / "val_label.txt").read_text().splitlines()[:n]
    keep = {line.split()[0] for line in lines}
    for old in (root / "val").iterdir():
        if old.name not in keep:
            old.unlink()
    for line in lines:
        dst = root / "val" / line.split()[0]
        if not dst.exists():
            dst.symlink_to(SAMPLE / "val" / line.split()[0])
    (root / "val_label.txt").write_text("\n".join(lines) + "\n")
    if not (root / "label.txt").exists():
        (root / "label.txt").symlink_to(SAMPLE / "label.txt")


def bootstrap_cost_file(path: Path) -> None:
    """A cost file of zeros: lets the workflow parse before anything is measured (sizes matter only on a cluster)."""
    zero = {"fixed_s": 0.0, "per_image_s": 0.0, "peak_mb": 0.0}
    kinds = {k: zero for k in cost.BUILD_KINDS}
    stages = {s: (kinds if s in cost.KIND_STAGES else zero) for s in cost.STAGES if s != "make_shards"}
    doc = {"format": cost.FORMAT, "reference_threads": 2, "shard_parallel_fraction": 1.0,
           "geometries": {"224": {**zero, "bytes_per_image": 0}},
           "architectures": {"bootstrap": {"input_size": 224, "parallel_fraction": 1.0, "stages": stages}}}
    path.write_text(json.dumps(doc))


def tsv(path: Path) -> dict:
    """Wall seconds and max_rss (MB; sampled, so only for jobs of many seconds) of a snakemake benchmark file."""
    with open(path) as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    return {"s": float(row["s"]), "max_rss": float(row["max_rss"]) if row["max_rss"] not in ("-", "NA") else 0.0}


def parallel_fraction(onnx_path: Path, size: int) -> float:
    """Amdahl parallel fraction of ONNX Runtime fp32 inference from batch-4 timings at 1 and 2 threads."""
    x = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
    times = {}
    for threads in (1, 2):
        sess = open_session(onnx_path, threads)
        name = sess.get_inputs()[0].name
        sess.run(None, {name: x})
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            best = min(best, time.perf_counter() - t0)
        times[threads] = best
    return round(min(max(2 * (1 - times[2] / times[1]), 0.3), 1.0), 3)


def preprocess_seconds(root: Path, n: int, spec: dict) -> float:
    """Decode + resize + crop seconds per image in one process, as a shard job does it."""
    files = [root / "val" / ln.split()[0] for ln in (root / "val_label.txt").read_text().splitlines()[:n]]
    spec = preprocess.normalize_spec(spec)
    t0 = time.perf_counter()
    for f in files:
        preprocess.transform_uint8(preprocess.load_image(f), spec)
    return (time.perf_counter() - t0) / len(files)


def shard_peak_mb(work: Path, geom: str, n: int) -> float:
    """Peak memory of one shard job of n images at a geometry: the step run in a fresh process, its own peak plus
    its decoding workers' (the workflow's benchmark files sample memory too rarely for a job this short)."""
    size, resize, interp = geom.split("-")[:3]
    code = ("import resource, sys\nfrom effzoo.steps.make_shards import main\nmain(sys.argv[1:])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + 2 * "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    with tempfile.TemporaryDirectory() as td:
        args = ["--root", str(work / "zoo"), "--index", str(work / "npz/zoo/index.tsv"), "--shard", "0",
                "--shard-size", str(n), "--size", size, "--resize", resize[1:], "--interpolation", interp,
                "--on-bad-image", "error", "--workers", "2", "--out", f"{td}/shard.npz"]
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    return round(int(out.stdout.split()[-1]) / 1024, 1)


def calibration_seconds(work: Path, variant: str, geom: str, images: int, validation: int) -> float:
    """calibration_s of the calibrate step run again on fewer images (the slope between two runs is the per-image
    cost; the rest, the prepared graph and its session, is fixed)."""
    with tempfile.TemporaryDirectory() as td:
        args = ["--onnx", f"onnx/{variant}.onnx", "--export-info", f"onnx/{variant}.json", "--spec-json",
                f"onnx/{variant}.preprocess.json", "--datalist", f"npz/zoo/{geom}/datalist.tsv",
                *calibrate_args(images, validation=validation), "--prepped", f"{td}/p.onnx", "--stats",
                f"{td}/s.npz", "--manifest", f"{td}/c.json"]
        subprocess.run([sys.executable, "-m", "calibrate", *args], cwd=work, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": f"{REPO / 'scripts'}{os.pathsep}{REPO}"})
        return json.loads(Path(f"{td}/c.json").read_text())["calibration_s"]


def run_workflow(work: Path, cfg: dict, targets: list[str]) -> None:
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
           str(work / "config.yaml"), "--cores", "2", "--workflow-profile", "none", "--rerun-incomplete", *targets]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-4000:] + proc.stderr[-4000:])


def weight_layers(onnx_path: Path) -> int:
    """Conv and Gemm nodes of an exported model: the layers the int8 search ranks."""
    import onnx

    return sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in onnx.load(str(onnx_path), load_external_data=False)
               .graph.node)


def add_memory_baselines(stages: dict) -> None:
    """base_mb of predict and benchmark: the same runtime's fp32 build peak (the model loaded); what they hold
    above it grows with the batch."""
    for stage in ("predict", "benchmark"):
        for kind, rec in stages[stage].items():
            rec["base_mb"] = stages["build_float"][kind.rsplit("-", 1)[0] + "-fp32"]["peak_mb"]


def measure_variant(work: Path, variant: str, tag: str, n: int, base: dict) -> tuple[dict, dict]:
    """Run one variant's whole chain; return (architecture entry, shard geometry entry)."""
    cfg = {**base, "run_variants": [variant], "variants": {variant: {"tag": tag, "weights": "random"}}}
    t0 = time.monotonic()
    run_workflow(work, cfg, [f"metrics/{variant}.json"])
    spec = json.loads((work / f"onnx/{variant}.preprocess.json").read_text())
    size = spec["input_size"][1]
    geom = preprocess.geometry_id(spec, False)
    shard = tsv(work / f"benchmarks/make_shards/zoo/{geom}/00000.tsv")
    info = json.loads((work / f"onnx/{variant}.json").read_text())
    export = tsv(work / f"benchmarks/export_onnx/{variant}.tsv")
    cal_doc = json.loads((work / f"calib/{variant}/calibration.json").read_text())
    cal = tsv(work / f"benchmarks/calibrate/{variant}.tsv")
    fp32_doc = json.loads((work / f"output/{variant}-fp32/predict.json").read_text())
    fp32_per_image = fp32_doc["inference_s"] / fp32_doc["images"]
    cal_images, split = cal_doc["images"], cal_doc["validation"]["images"]
    few = max(cal_images // 4, 1)   # the same split, fewer range images: the slope is a range image's cost
    few_s = calibration_seconds(work, variant, geom, few, split)
    # a range image runs the float model with statistics ops added: never less than one fp32 inference (the
    # slope between two short calibrations is noisy)
    cal_per_image = max(max(cal_doc["calibration_s"] - few_s, 0.0) / (cal_images - few), fp32_per_image)
    stages = {"export_onnx": {"fixed_s": export["s"], "peak_mb": export["max_rss"]},
              "calibrate": {"fixed_s": round(max(cal["s"] - cal_images * cal_per_image - split * fp32_per_image, 0.0),
                                              3),
                            "per_image_s": round(cal_per_image, 5), "peak_mb": cal_doc["peak_rss_mb"]},
              "build_float": {}, "build_int8": {}, "predict": {}, "benchmark": {}}
    timed = BENCH_MEASURED["rounds"] * (BENCH_MEASURED["iterations"] + BENCH_MEASURED["warmup"]) * sum(
        BENCH_MEASURED["batch_sizes"])
    batch = min(base["inference"]["batch"], n)   # the largest batch predict ran here
    for quant, kind in MEASURED_QUANT.items():
        pred = tsv(work / f"benchmarks/predict/{variant}-{quant}.tsv")
        pdoc = json.loads((work / f"output/{variant}-{quant}/predict.json").read_text())
        open_s = max(pred["s"] - pdoc["inference_s"], 0.0)
        per_image = pdoc["inference_s"] / pdoc["images"]
        stages["predict"][kind] = {"fixed_s": round(open_s, 3), "per_image_s": round(per_image, 5),
                                   "peak_mb": pdoc["peak_rss_mb"], "batch": batch}
        # benchmark: the timed calls (build and PyTorch eager, per batch size) from its own latencies; the rest of
        # the job (imports, sessions, the PyTorch model) is its fixed cost
        bench = tsv(work / f"benchmarks/benchmark/{variant}-{quant}.tsv")
        perf = json.loads((work / f"perf/{variant}-{quant}.json").read_text())
        calls = BENCH_MEASURED["rounds"] * (BENCH_MEASURED["iterations"] + BENCH_MEASURED["warmup"])
        timed_s = sum(calls * (r["build"]["latency_mean_ms"] + r["torch_eager"]["latency_mean_ms"]) / 1e3
                      for r in perf["results"].values())
        stages["benchmark"][kind] = {"fixed_s": round(max(bench["s"] - timed_s, 0.0), 3),
                                     "per_image_s": round(timed_s / timed, 5), "peak_mb": perf["peak_rss_mb"],
                                     "batch": max(BENCH_MEASURED["batch_sizes"])}
        rule = "build_int8" if "int8" in kind else "build_float"
        build = tsv(work / f"benchmarks/{rule}/{variant}-{quant}.tsv")
        if rule == "build_float":
            peak = json.loads((work / f"vacc/{variant}-{quant}/build.json").read_text())["build_peak_rss_mb"]
            stages["build_float"][kind] = {"fixed_s": build["s"], "peak_mb": peak}
            continue
        built = json.loads((work / f"vacc/{variant}-{quant}/build.json").read_text())
        budget = built["details"]["accuracy_budget"]
        layers = weight_layers(work / f"onnx/{variant}.onnx")
        split = max(budget["split_images"], 1)
        # the search's trials over the weight layers (p = 0, 1, 2, 4 ... n, then bisection, then the final check):
        # each opens the trial graph's session (as predict opens the build's) and runs the split images, at the
        # build's speed or, where this CPU cannot run the target's kernels, unfused in float: the slower of the two
        passes = 2 * math.ceil(math.log2(layers + 1)) + 3
        searched = budget.get("measured", {})   # the search's seconds
        rank_per_image = searched.get("rank_s", 0.0) / split
        stages["build_int8"][kind] = {
            "fixed_s": round(max(build["s"] - searched.get("rank_s", 0.0) - searched.get("search_s", 0.0), 0.0), 3),
            "per_image_s": round(max(per_image, fp32_per_image) + rank_per_image / passes, 5),
            "per_pass_s": round(open_s, 3),
            "passes": passes, "peak_mb": built["build_peak_rss_mb"]}
    add_memory_baselines(stages)
    entry = {"tag": tag, "input_size": size, "gmacs": info["gmacs"], "params_m": info["params_m"],
             "parallel_fraction": parallel_fraction(work / f"onnx/{variant}.onnx", size),
             "measured_wall_s": round(time.monotonic() - t0, 1), "stages": stages}
    shard_file = work / f"npz/zoo/{geom}/shard-00000.npz"
    per_image_1 = preprocess_seconds(work / "zoo", n, spec)   # one process; shard jobs decode in `workers`
    per_image = per_image_1 * cost.amdahl(SHARD_PARALLEL, 2, 1)
    geometry = {"fixed_s": round(max(shard["s"] - n * per_image, 0.0), 3), "per_image_s": round(per_image, 5),
                "peak_mb": shard_peak_mb(work, geom, n), "bytes_per_image": round(shard_file.stat().st_size / n)}
    return entry, {str(size): geometry}


def measure(a) -> None:
    work = Path(a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    make_dataset(work / "zoo", a.images)
    boot = work / "bootstrap_cost.json"
    bootstrap_cost_file(boot)
    half = a.images // 2
    base = {"dataset": "zoo", "datasets": {"zoo": {"root": str(work / "zoo")}},
            "run_quant": list(MEASURED_QUANT), "calibration": {"images": half, "validation_images": a.images - half},
            "inference": {"batch": resolved_config()["inference"]["batch"]},
            "benchmark": BENCH_MEASURED, "sizing": {"cost_file": str(boot)},
            "preprocessing": {"png_from_size": None}}   # raw shards: PNG storage is measured by `disk`
    tags = {v: c["tag"] for v, c in resolved_config()["variants"].items()}
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    archs, geoms = (old.get("architectures", {}), old.get("geometries", {})) if a.update else ({}, {})
    for variant in a.variants:
        tag = tags.get(variant, variant)
        print(f"measuring {variant} ({tag}) ...", flush=True)
        entry, geometry = measure_variant(work, variant, tag, a.images, base)
        archs[cost.arch_of(tag)] = entry
        geoms.update(geometry)
        print(f"  {json.dumps({k: v for k, v in entry.items() if k != 'stages'})}", flush=True)
    doc = {"format": cost.FORMAT, "measured": datetime.date.today().isoformat(), "cpu": cpu_line(),
           "cpu_kind": cpu_kind(), "command": "python tools/zoo_cost.py measure " + " ".join(sys.argv[2:]),
           "images_measured": a.images, "reference_threads": 2,
           "shard_parallel_fraction": SHARD_PARALLEL,
           "geometries": dict(sorted(geoms.items(), key=lambda kv: int(kv[0]))), "architectures": archs}
    if "png_storage" in old:
        doc["png_storage"] = old["png_storage"]
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def project(a) -> None:
    model = cost.load(a.cost)
    cfg = resolved_config()
    work = cost.Workload.from_config(cfg, a.images, a.images)
    variants = a.variants or B_SERIES
    quants = cfg["run_quant"]
    kinds = {q: cost.build_kind(cfg["quant_modes"][q]) for q in quants}
    sizing = cfg["sizing"]
    limit = sizing["max_job_minutes"] * 60 / sizing["safety_factor"]
    print(f"cost file: {model.source} (measured {model.doc.get('measured')} on {model.doc.get('cpu')})")
    print(f"projection: {a.images} images, {len(quants)} quant modes ({', '.join(quants)}), {a.threads} threads "
          f"per job; core-hours = wall x threads, before the safety factor ({sizing['safety_factor']})\n")
    print("| variant | input | export | calibrate | builds | predict | benchmark | total core-h | predict parts "
          "| peak MB (job) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total, longest, disk, geoms = 0.0, 0.0, {}, {}
    for v in variants:
        tag = cfg["variants"][v]["tag"]
        arch, size = cost.arch_of(tag), preprocess.spec_for(tag)["input_size"][1]
        storage = cost.shard_storage(size, cfg["preprocessing"]["png_from_size"])
        row, peak, chain = {}, 0.0, 0.0
        for stage in ("export_onnx", "calibrate"):
            s, m = cost.job_seconds(model, stage, arch, size, None, a.threads, work.images(stage),
                                    work.split_images if stage == "calibrate" else 0, storage=storage)
            row[stage], peak, chain = s * a.threads, max(peak, m), chain + s
        row["builds"] = row["predict"] = row["benchmark"] = 0.0
        parts_max, slowest_build, slowest_predict = 0, 0.0, 0.0
        for q in quants:
            build = "build_int8" if "int8" in kinds[q] else "build_float"
            s, m = cost.job_seconds(model, build, arch, size, kinds[q], a.threads, work.images(build),
                                    storage=storage)
            row["builds"] += s * a.threads
            slowest_build, peak = max(slowest_build, s), max(peak, m)
            fixed = cost.job_seconds(model, "predict", arch, size, kinds[q], a.threads, 0, storage=storage)[0]
            per_shard = cost.job_seconds(model, "predict", arch, size, kinds[q], a.threads, work.shard_size,
                                         storage=storage)[0] - fixed
            parts = cost.split_parts(math.ceil(a.images / work.shard_size), per_shard, fixed, limit)
            parts_max = max(parts_max, len(parts))
            for first, last in parts:
                s, m = cost.job_seconds(model, "predict", arch, size, kinds[q], a.threads,
                                        work.images("predict", first, last), batch=work.predict_batch,
                                        storage=storage)
                row["predict"] += s * a.threads
                slowest_predict, peak = max(slowest_predict, s), max(peak, m)
            s, m = cost.job_seconds(model, "benchmark", arch, size, kinds[q], a.threads, work.images("benchmark"),
                                    batch=work.benchmark_batch)
            row["benchmark"] += s * a.threads
            peak = max(peak, m)
        chain += slowest_build + slowest_predict
        longest = max(longest, chain)
        if size not in geoms:   # shard jobs with the workers as threads, shared by the variants of a geometry
            workers = cfg["preprocessing"]["workers"]
            s, m = cost.job_seconds(model, "make_shards", None, size, None, workers, work.shard_size,
                                    storage=storage)
            geoms[size] = math.ceil(a.images / work.shard_size) * s * workers
            disk[size] = (a.images * model.bytes_per_image(size),
                          a.images * model.stored_bytes_per_image(size, storage), storage)
            peak = max(peak, m)
        v_total = sum(row.values())
        total += v_total
        print(f"| {v} | {size} | {_hours(row['export_onnx'])} | {_hours(row['calibrate'])} | {_hours(row['builds'])} "
              f"| {_hours(row['predict'])} | {_hours(row['benchmark'])} | {_hours(v_total)} | {parts_max} "
              f"| {peak:.0f} |")
    shard_total = sum(geoms.values())
    total += shard_total
    print(f"\npreprocessing ({len(geoms)} geometries): {_hours(shard_total)} core-h; "
          f"all stages: {_hours(total)} core-h "
          f"({_hours(total * sizing['safety_factor'])} as requested with the safety factor)")
    print(f"\n| geometry | raw shards (GB) | as stored (GB) | storage (png_from_size "
          f"{cfg['preprocessing']['png_from_size']}) |\n|---|---|---|---|")
    for size in sorted(disk):
        print(f"| {size} | {disk[size][0] / 1e9:.1f} | {disk[size][1] / 1e9:.1f} | {disk[size][2]} |")
    logits = a.images * cfg["num_classes"] * 4 * len(quants) * len(variants)
    print(f"| all | {sum(d[0] for d in disk.values()) / 1e9:.1f} | {sum(d[1] for d in disk.values()) / 1e9:.1f} "
          f"(+ logits {logits / 1e9:.1f} GB in output/) | |")
    cores = a.nodes * a.cores
    wall = max(total / cores, longest)
    print(f"\nwall time on {a.nodes} nodes x {a.cores} cores: at least {wall / 3600:.1f} h (all core-hours over "
          f"{cores} cores, or the longest export -> calibrate -> build -> predict chain, {longest / 3600:.1f} h, "
          f"whichever is longer)")


def check(a) -> None:
    """Projected (before safety) against measured seconds for every job of a finished run."""
    model = cost.load(a.cost)
    work_dir = Path(a.workdir)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())   # the run's config file over the defaults, as run
    update_config(cfg, yaml.safe_load(Path(a.configfile or work_dir / "config.yaml").read_text()))
    validate(cfg, str(REPO / "schemas" / "config.schema.yaml"))

    def size_of(dataset):
        return len((Path(cfg["datasets"][dataset]["root"]) / "val_label.txt").read_text().split("\n")) - 1
    n = size_of(cfg["dataset"])
    work = cost.Workload.from_config(cfg, n, size_of(cfg["calibration"]["dataset"] or cfg["dataset"]))
    quants = cfg["quant_modes"]
    rows = []
    for path in sorted(work_dir.glob("benchmarks/**/*.tsv")):
        rule = path.relative_to(work_dir / "benchmarks").parts[0]
        stem = path.stem
        if rule == "make_shards":
            geom = path.parent.name
            size = int(geom.split("-")[0])
            proj = cost.job_seconds(model, rule, None, size, None, cfg["preprocessing"]["workers"],
                                    min(work.shard_size, n - int(stem) * work.shard_size),
                                    storage=cost.shard_storage(size, cfg["preprocessing"]["png_from_size"]))[0]
            name = f"make_shards {geom}/{stem}"
        else:
            if rule == "predict" and path.parent.name != "predict":
                continue   # parts: not in this check
            variant, _, quant = stem.partition("-")
            tag = cfg["variants"][variant]["tag"]
            size = preprocess.spec_for(tag, cfg["variants"][variant].get("preprocess"))["input_size"][1]
            kind = None
            if rule in cost.KIND_STAGES:
                kind = cost.build_kind(quants[quant])
            # (the OpenVINO build rules write their benchmark files under build_float/ and build_int8/ too)
            threads = cfg["inference"]["threads"] if rule == "predict" else (
                cfg["benchmark"]["threads"] if rule == "benchmark" else 2)
            proj = cost.job_seconds(model, rule, cost.arch_of(tag), size, kind, threads, work.images(rule),
                                    work.split_images if rule == "calibrate" else 0, work.batch(rule),
                                    cost.shard_storage(size, cfg["preprocessing"]["png_from_size"]))[0]
            name = f"{rule} {stem}"
        rows.append((name, proj, tsv(path)["s"]))
    print(f"cost file {model.source}; run {work_dir} ({n} images); CPU here: {cpu_line()}\n")
    sizes = cost.Sizing(cfg["sizing"]["safety_factor"], cfg["sizing"]["min_runtime_minutes"],
                        cfg["sizing"]["max_job_minutes"], cfg["sizing"]["min_mem_mb"])
    print("| job | projected s | measured s | error | requested min | measured / requested |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for name, proj, real in rows:
        asked = sizes.runtime_minutes(proj)
        worst = max(worst, real / (60 * asked))
        print(f"| {name} | {proj:.1f} | {real:.1f} | {100 * (proj - real) / real:+.0f}% | {asked} "
              f"| {100 * real / (60 * asked):.0f}% |")
    p, r = sum(x[1] for x in rows), sum(x[2] for x in rows)
    print(f"| all {len(rows)} jobs | {p:.1f} | {r:.1f} | {100 * (p - r) / r:+.0f}% | | at most {100 * worst:.0f}% |")


def disk(a) -> None:
    """Lossless compact shards against the plain ones on real images: zlib inside the npz (np.savez_compressed)
    and the workflow's PNG storage (shard_io, written and read as the steps do, every row checked against its
    sha256); size ratio, write and read time per image in one process, exactness. --update records the PNG
    figures in the cost file (the job sizes and `project` use them)."""
    lines = (SAMPLE / "val_label.txt").read_text().splitlines()[:a.images]
    print(f"{len(lines)} sample images; CPU: {cpu_line()}; date {datetime.date.today()}\n")
    print("| size | storage | MB | size ratio | write ms/img | read ms/img | exact |")
    print("|---|---|---|---|---|---|---|")
    sizes = {}
    for size, resize in ((224, 256), (456, 488), (600, 632)):
        spec = preprocess.normalize_spec({"input_size": [3, size, size], "interpolation": "bicubic",
                                          "crop_pct": size / resize, "crop_mode": "center", "mean": [0.5] * 3,
                                          "std": [0.5] * 3})
        images = np.stack([preprocess.transform_uint8(preprocess.load_image(SAMPLE / "val" / ln.split()[0]), spec)
                           for ln in lines])
        n, rows = len(images), []
        with tempfile.TemporaryDirectory() as td:
            compact = Path(td) / "zlib.npz"
            t0 = time.perf_counter()
            np.savez_compressed(compact, images=images)
            t_write = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = np.load(compact)["images"]
            rows.append(("npz, zlib", compact.stat().st_size, t_write, time.perf_counter() - t0,
                         np.array_equal(back, images)))
            for storage in shard_io.STORAGES:
                path = Path(td) / f"{storage}.npz"
                t0 = time.perf_counter()
                shard_io.write_shard(path, images, [0] * n, [str(i) for i in range(n)], [], storage)
                t_write = time.perf_counter() - t0
                t0 = time.perf_counter()
                back = np.concatenate([b for b, _, _ in shard_io.iter_shards([str(path)], 32)])
                rows.append((f"shard, {storage}", path.stat().st_size, t_write, time.perf_counter() - t0,
                             np.array_equal(back, images)))
        plain = rows[1][1]
        for name, nbytes, t_write, t_read, exact in rows:
            print(f"| {size} | {name} | {nbytes / 1e6:.1f} | {plain / nbytes:.2f} | {1e3 * t_write / n:.2f} | "
                  f"{1e3 * t_read / n:.2f} | {exact} |")
        # the PNG write time includes the raw write's sha256 and file write: only the encoding is extra
        png, raw = rows[2], rows[1]
        sizes[str(size)] = {"size_ratio": round(raw[1] / png[1], 3),
                            "encode_ms": round(1e3 * max(png[2] - raw[2], 0.0) / n, 2),
                            "decode_ms": round(1e3 * max(png[3] - raw[3], 0.0) / n, 2)}
    if a.update:
        out = Path(a.cost) if a.cost else cost.COST_FILE
        doc = json.loads(out.read_text())
        doc["png_storage"] = {"measured": datetime.date.today().isoformat(), "cpu": cpu_line(),
                              "command": "python tools/zoo_cost.py disk " + " ".join(sys.argv[2:]),
                              "images": len(lines), "png_level": shard_io.PNG_LEVEL, "sizes": sizes}
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote png_storage to {out}: {json.dumps(sizes)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--variants", nargs="+", default=B_SERIES)
    m.add_argument("--images", type=int, default=16)
    m.add_argument("--workdir", default="bench-out/zoo-cost")
    m.add_argument("--out", default=str(cost.COST_FILE))
    m.add_argument("--update", action="store_true", help="keep the out file's other architectures")
    p = sub.add_parser("project")
    p.add_argument("--cost", default=None)
    p.add_argument("--images", type=int, default=50000)
    p.add_argument("--variants", nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--cores", type=int, default=32)
    c = sub.add_parser("check")
    c.add_argument("--workdir", required=True)
    c.add_argument("--configfile")
    c.add_argument("--cost", default=None)
    d = sub.add_parser("disk")
    d.add_argument("--images", type=int, default=200)
    d.add_argument("--update", action="store_true", help="record the PNG figures in the cost file")
    d.add_argument("--cost", default=None, help="the cost file to update (effzoo/zoo_cost.json)")
    a = ap.parse_args(argv)
    {"measure": measure, "project": project, "check": check, "disk": disk}[a.command](a)


if __name__ == "__main__":
    main()
