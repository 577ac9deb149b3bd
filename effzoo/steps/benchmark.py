"""Throughput and latency of a build, with timm's PyTorch eager model as the baseline, in one process.

Like the vendor's benchmark tool (-b batch, -i iterations, instances): for every batch size, `rounds`
rounds of `iterations` calls after `warmup` calls, the build on its own runtime (ONNX Runtime or OpenVINO,
effzoo/runtime.py) and PyTorch eager interleaved (rotating order, so machine noise hits both alike).
Reported per batch size and engine: throughput (images/s; median over rounds, with min/max as the spread) and
latency (mean, p50, p90, p99 ms over all calls); for the build, its speed over PyTorch eager as the median of the
per-round ratios (each round times both back to back, so the machine's drift between rounds and between jobs
cancels), with their min/max. `deploy_mode` names the mode the deployed model runs in (latency mode, the largest
batch size, these threads): deploy ranks builds on their speed over PyTorch there. `build` is the latency mode
predict runs; `build_throughput` (OpenVINO builds, and any build with instances > 1) is the throughput mode:
`instances` streams or sessions with several requests in flight, aggregate images/s. The load average before
and after, the CPU steal time during the run, the CPU's flags and the check of the CPU against what the build
requires are recorded; a warning is added when the machine was busy. A build whose CPU check says skip (bf16 on a
CPU without bf16) is not timed: its perf JSON says why (`not_run`) and holds no figure. The PyTorch baseline uses
timm's random init: speed does not depend on the weights. The model is checked against the sha256 its build.json
recorded before it is timed.

CLI: python -m benchmark --model vacc/V-Q/model.onnx|model.xml --build-json vacc/V-Q/build.json --out perf/V-Q.json \
        --batch-sizes 1 16 --iterations 5 --warmup 2 --rounds 3 --threads 2 --instances 1 --layout-tuning off
"""
from __future__ import annotations

import argparse
import os
import platform
import resource

import numpy as np

from effzoo import fingerprint, runtime, speed
from effzoo.common import LOG, Progress, write_json
from effzoo.cpu_target import REPORTED_FLAGS, cpu_flags, cpu_name

def torch_runner(tag: str, threads: int, spec: dict):
    """timm's model in eager mode, fed the same uint8 batch (ToTensor + Normalize included, as users run it)."""
    import timm
    import torch

    torch.set_num_threads(threads)
    model = timm.create_model(tag, pretrained=False).eval()
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1)

    def run(x_uint8):
        with torch.inference_mode():
            x = torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
            return model(x)
    return run, torch.__version__


def benchmark(model: str, build: dict, batch_sizes: list[int], iterations: int, warmup: int, rounds: int,
              threads: int, instances: int, baseline: bool = True, layout_tuning: bool = False) -> dict:
    """Time the build (latency mode; also throughput mode on OpenVINO or with instances > 1) and PyTorch eager,
    interleaved, at every batch size."""
    size = build["preprocess"]["input_size"][1]
    load_before = os.getloadavg()
    ticks_before = speed.cpu_ticks()
    precision = runtime.precision_of(build)
    run, info = runtime.open_build(model, threads, layout_tuning, precision)
    runners, per_call, modes = {"build": run}, {"build": 1}, {"latency": info}
    if info["runtime"] == "openvino" or instances > 1:
        runners["build_throughput"], modes["throughput"] = runtime.open_throughput(model, threads, instances,
                                                                                   layout_tuning, precision)
        per_call["build_throughput"] = modes["throughput"]["requests"]
    versions = {info["runtime"]: info["version"], "python": platform.python_version()}
    if baseline:
        runners["torch_eager"], versions["torch"] = torch_runner(build["tag"], threads, build["preprocess"])
        per_call["torch_eager"] = 1
    progress = Progress(len(batch_sizes) * rounds * len(runners), f"benchmark {model}")
    results = {}
    rng = np.random.default_rng(0)
    for bs in batch_sizes:
        x = rng.integers(0, 256, (bs, size, size, 3), dtype=np.uint8)
        per = speed.measure(runners, x, {n: bs * k for n, k in per_call.items()}, iterations, warmup, rounds,
                            progress)
        if baseline:   # each round's ratio to the PyTorch turn beside it: machine drift between rounds cancels
            for n in runners:
                if n != "torch_eager":
                    ratio = speed.paired_ratio(per[n], per["torch_eager"])
                    per[n]["speedup_vs_torch_eager"] = ratio["median"]
                    per[n]["speedup_vs_torch_eager_range"] = [ratio["min"], ratio["max"]]
        results[str(bs)] = per
    load_after = os.getloadavg()
    steal = speed.steal_percent(ticks_before, speed.cpu_ticks())
    warnings = []
    if steal is not None and steal > 5:
        warnings.append(f"the hypervisor gave {steal:.0f}% of CPU time to other guests during the run: "
                        f"figures are noisy")
    if load_before[0] > 0.5:
        warnings.append(f"machine busy before the run (1-min load average {load_before[0]:.2f}): figures are noisy")
    if load_after[0] > threads + 0.75:
        warnings.append(f"load average {load_after[0]:.2f} after the run exceeds the {threads} threads used: "
                        f"other work competed for the CPU")
    best_bs, best_mode = max(((bs, n) for bs, r in results.items() for n in r if n != "torch_eager"),
                             key=lambda k: results[k[0]][k[1]]["throughput_ips"])
    return {"quant": build["quant"], "tag": build["tag"], "model": model, "cpu": cpu_name(),
            "cpu_flags": sorted(cpu_flags() & REPORTED_FLAGS), "cores": os.cpu_count(), "threads": threads,
            "instances": instances, "iterations": iterations, "warmup": warmup, "rounds": rounds,
            "versions": versions, "runtime": modes, "results": results,
            "batch1_latency_ms": results.get("1", {}).get("build", {}).get("latency_p50_ms"),
            "best_throughput_ips": results[best_bs][best_mode]["throughput_ips"],
            "best_throughput_at": {"batch": int(best_bs), "mode": best_mode},
            "deploy_mode": {"mode": "latency", "batch": max(batch_sizes), "threads": threads},
            "loadavg_before": load_before, "provenance": fingerprint.provenance("benchmark"),
            "loadavg_after": load_after, "cpu_steal_pct": steal, "warnings": warnings,
            "method": "median over rounds of interleaved engines (rotating order, 0.1 s pause between turns); "
                      "warm-up excluded"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--build-json", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-sizes", type=int, nargs="+", required=True)
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--instances", type=int, required=True)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--layout-tuning", choices=["on", "off"], required=True,
                    help="ORT CPU layout pass for SE/SiLU graphs, as predict uses it (effzoo/ort_layout.py)")
    a = ap.parse_args(argv)
    build, cpu = runtime.checked_build(a.build_json, skippable=True)
    if "skipped" in cpu:   # a bf16 build on a CPU without bf16: no figure is recorded, only why
        write_json(a.out, {"quant": build["quant"], "tag": build["tag"], "model": a.model, "cpu": cpu_name(),
                           "cpu_flags": sorted(cpu_flags() & REPORTED_FLAGS), "cpu_check": cpu,
                           "not_run": cpu["skipped"], "provenance": fingerprint.provenance("benchmark")})
        return
    res = benchmark(a.model, build, a.batch_sizes, a.iterations, a.warmup, a.rounds, a.threads,
                    a.instances, not a.no_baseline, a.layout_tuning == "on")
    res["cpu_check"] = cpu
    if "warning" in cpu:
        res["warnings"].append(cpu["warning"])
    for w in res["warnings"]:
        LOG.warning(w)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_json(a.out, res)
