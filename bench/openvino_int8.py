"""int8 on OpenVINO, two ways, side by side on ../shared/imagenet-sample-500 (one process, interleaved timing):
(a) the project's builds: its calibrated QDQ graph converted to OpenVINO IR (ov_int8_* quant modes), and
(b) NNCF's post-training quantization (nncf.quantize, MIXED preset, fast bias correction) of the project's
    OpenVINO fp32 build, on the same calibration images (calibration.json's files).
Prints top-1, top-5, top-1 agreement with the fp32 build and images/s (batch 16, 2 threads, latency mode) for
both, with ONNX Runtime fp32/int8, OpenVINO fp32 and PyTorch eager as references, and the CPU flags.

usage: python bench/openvino_int8.py [--variant tf_efficientnet_lite0] [--workdir bench-out/sample]
       (runs the workflow on the sample in the workdir first if its metrics are missing; efficientnet_b0 runs
        with random weights: speed only)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from _workflow import REPO, timing_args

sys.path.insert(0, str(REPO))
from effzoo import (
    runtime,  # noqa: E402
    speed,  # noqa: E402
)
from effzoo.cpu_target import cpu_flags  # noqa: E402
from effzoo.shard_io import iter_datalist_rows, iter_shards, read_datalist  # noqa: E402
from effzoo.steps import benchmark  # noqa: E402

MODES = ["fp32", "int8_max", "int8_percentile", "int8_kl_divergence", "ov_fp32", "ov_int8_max",
         "ov_int8_percentile", "ov_int8_kl_divergence"]


def run_workflow(work: Path, variant: str) -> None:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.update(dataset="imagenet-sample-500", run_variants=[variant], run_quant=MODES)
    cfg["datasets"]["imagenet-sample-500"]["root"] = str(REPO.parent / "shared" / "imagenet-sample-500")
    if variant == "efficientnet_b0":
        cfg["variants"][variant]["weights"] = "random"
    cfg["benchmark"] = {"enabled": False}
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
                    str(work / "config.yaml"), "--cores", "2", f"metrics/{variant}.json"], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})


def nncf_model(work: Path, variant: str, out: Path) -> tuple[str, float]:
    """NNCF int8 IR of the OpenVINO fp32 build, calibrated on calibration.json's images; (path, seconds)."""
    try:
        import nncf
    except ImportError:
        raise SystemExit("NNCF is not a project dependency (the project's own int8 builds measured better): "
                         "pip install nncf==3.4.0 to run this comparison") from None
    import openvino as ov

    cal = json.loads((work / f"calib/{variant}/calibration.json").read_text())
    datalist = work / cal["source_datalist"]
    rows = {r[2]: i for i, r in enumerate(read_datalist(str(datalist)))}
    chosen = [rows[f] for f in cal["files"]]
    t0 = time.monotonic()
    data = nncf.Dataset([b for b, _ in iter_datalist_rows(str(datalist), chosen, 1)])
    model = ov.Core().read_model(str(work / f"vacc/{variant}-ov_fp32/model.xml"))
    q = nncf.quantize(model, data, preset=nncf.QuantizationPreset.MIXED, subset_size=len(chosen),
                      fast_bias_correction=True)
    ov.save_model(q, str(out), compress_to_fp16=False)
    return str(out), time.monotonic() - t0


def evaluate(model: str, shards: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(top-5 ids, labels) over the shards."""
    run, _ = runtime.open_build(model, 2)
    tops, labels = [], []
    for images, lab, _ in iter_shards(shards, 32):
        probs = run(images)[1]
        tops.append(np.argsort(-probs, axis=1, kind="stable")[:, :5])
        labels.append(lab)
    return np.concatenate(tops), np.concatenate(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    timing_args(ap)
    ap.add_argument("--workdir", default="bench-out/sample")
    a = ap.parse_args()
    work = (REPO / a.workdir).resolve()
    if not (work / f"metrics/{a.variant}.json").exists():
        run_workflow(work, a.variant)
    nncf_path, nncf_s = nncf_model(work, a.variant, work / f"nncf-{a.variant}.xml")
    models = {q: str(work / f"vacc/{a.variant}-{q}" / ("model.xml" if q.startswith("ov_") else "model.onnx"))
              for q in MODES}
    models["nncf_int8 (OpenVINO)"] = nncf_path
    build = json.loads((work / f"vacc/{a.variant}-fp32/build.json").read_text())
    shards = sorted(str(p) for p in (work / "npz/imagenet-sample-500").glob(
        f"{build['preprocess']['input_size'][1]}-*/shard-*.npz"))
    acc = {q: evaluate(m, shards) for q, m in models.items()}
    ref = acc["fp32"][0][:, 0]
    runners = {"torch eager": benchmark.torch_runner(build["tag"], 2, build["preprocess"])[0]}
    runners.update({q: runtime.open_build(m, 2)[0] for q, m in models.items()})
    size = build["preprocess"]["input_size"][1]
    x = np.random.default_rng(0).integers(0, 256, (a.batch, size, size, 3), dtype=np.uint8)
    res = speed.measure(runners, x, a.batch, a.iterations, 2, a.rounds)
    base = res["torch eager"]["throughput_ips"]
    flags = sorted(cpu_flags() & {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"})
    print(f"\n{a.variant} on imagenet-sample-500 ({len(ref)} images), batch {a.batch}, 2 threads, {a.rounds} "
          f"interleaved rounds; CPU flags {flags}; NNCF quantization took {nncf_s:.1f} s")
    print(f"{'build':26s} {'top-1':>6s} {'top-5':>6s} {'agree fp32':>10s} {'img/s':>7s} {'vs eager':>8s}")
    print(f"{'torch eager':26s} {'':>6s} {'':>6s} {'':>10s} {base:7.1f} {1:7.2f}x")
    for q in models:
        top, labels = acc[q]
        ips = res[q]["throughput_ips"]
        print(f"{q:26s} {(top[:, 0] == labels).mean():6.3f} {(top == labels[:, None]).any(1).mean():6.3f} "
              f"{(top[:, 0] == ref).mean():10.3f} {ips:7.1f} {ips / base:7.2f}x")


if __name__ == "__main__":
    main()
