"""CPU runtimes side by side, in one process: timm's PyTorch eager model vs every build of a variant on its own
runtime (ONNX Runtime and OpenVINO builds) vs OpenVINO reading the ONNX Runtime files directly (f32, bf16, the
int8 QDQ files).

Prints throughput at one batch size and the ratio of each engine over PyTorch eager, all measured in the same
interleaved rounds (medians), plus the CPU's int8/bf16 capabilities that decide which of them can pay.

usage: python bench/runtimes_cpu.py [--workdir .] [--variant tf_efficientnet_lite0] [--batch 16] [--threads 2]
                                   [--builds-only]
Needs the builds under <workdir>/vacc/<variant>-<quant>/ (run the workflow first).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from _workflow import REPO, timing_args

sys.path.insert(0, str(REPO))
from effzoo.cpu_target import cpu_name  # noqa: E402


def cpu_flags() -> list[str]:
    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else set()
    return sorted(flags & {"avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"})


def openvino_runner(model: str, threads: int, precision: str):
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                      "PERFORMANCE_HINT": "LATENCY",
                                                      "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def main():
    from effzoo import runtime, speed
    from effzoo.common import Progress
    from effzoo.steps import benchmark

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    timing_args(ap)
    ap.add_argument("--workdir", default=".")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--builds-only", action="store_true",
                    help="PyTorch eager and the builds only (not OpenVINO reading the ONNX Runtime files)")
    a = ap.parse_args()
    work = Path(a.workdir).resolve()
    builds = sorted(p.parent for p in (work / "vacc").glob(f"{a.variant}-*/build.json"))
    if not builds:
        raise SystemExit(f"no builds of {a.variant} under {work / 'vacc'}: run the workflow first")
    fp32 = json.loads((work / "vacc" / f"{a.variant}-fp32" / "build.json").read_text())
    spec = fp32["preprocess"]
    runners = {"torch eager": benchmark.torch_runner(fp32["tag"], a.threads, spec)[0]}
    for b in builds:
        model = b / ("model.xml" if (b / "model.xml").exists() else "model.onnx")
        runners[f"build {b.name.split('-', 1)[1]}"] = runtime.open_build(str(model), a.threads)[0]
    try:
        if a.builds_only:
            raise ImportError
        import openvino  # noqa: F401
        runners["OpenVINO f32"] = openvino_runner(str(work / "vacc" / f"{a.variant}-fp32" / "model.onnx"),
                                                  a.threads, "f32")
        runners["OpenVINO bf16"] = openvino_runner(str(work / "vacc" / f"{a.variant}-fp32" / "model.onnx"),
                                                   a.threads, "bf16")
        for b in builds:
            if json.loads((b / "build.json").read_text())["kind"] == "int8" and (b / "model.onnx").exists():
                runners[f"OpenVINO {b.name.split('-', 1)[1]}"] = openvino_runner(str(b / "model.onnx"),
                                                                                 a.threads, "f32")
    except ImportError:
        if not a.builds_only:
            print("(OpenVINO not installed: pip install openvino==2026.4.1 to include it)")
    size = spec["input_size"][1]
    x = np.random.default_rng(0).integers(0, 256, (a.batch, size, size, 3), dtype=np.uint8)
    progress = Progress(a.rounds * len(runners), "runtimes")
    res = speed.measure(runners, x, a.batch, a.iterations, 2, a.rounds, progress)
    base = res["torch eager"]["throughput_ips"]
    print(f"\n{a.variant}, batch {a.batch}, {a.threads} threads, {a.rounds} rounds x {a.iterations} calls; "
          f"CPU {cpu_name()} flags {cpu_flags()}; load average {os.getloadavg()}")
    fp32 = {"onnxruntime": res.get("build fp32"), "openvino": res.get("build ov_fp32")}
    print(f"{'engine':34s} {'img/s':>8s} {'vs torch eager':>15s} {'vs its runtime fp32':>20s}")
    for n, r in sorted(res.items(), key=lambda kv: -kv[1]["throughput_ips"]):
        ref = fp32["openvino" if n.startswith("build ov_") else "onnxruntime"] if n.startswith("build ") else None
        vs = f"{r['throughput_ips'] / ref['throughput_ips']:19.2f}x" if ref else ""
        print(f"{n:34s} {r['throughput_ips']:8.1f} {r['throughput_ips'] / base:14.2f}x {vs}")


if __name__ == "__main__":
    main()
