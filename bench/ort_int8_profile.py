"""Where ONNX Runtime's int8 graph spends its time against its fp32, per op type, on this CPU.

Opens a variant's ONNX Runtime builds (fp32 and every int8 build in the workdir) as predict runs them (the
standard settings: 2 threads, one inter-op thread, every graph optimization), with per-node timing on,
runs `--calls` batches of `--batch` random uint8 images after one warm-up call, and sums the kernel time of each
op type after fusion (QLinearConv, DynamicQuantizeLinear, ...) per call. Then times the same builds interleaved
(effzoo.speed.measure, `--rounds` rounds, as predict opens them) for their speed over fp32 with its 95% interval
(t on the logs of the per-round ratios). Prints both with the CPU flags.

usage: python bench/ort_int8_profile.py WORKDIR --variant tf_efficientnet_lite0 [--batch 16] [--threads 2]
                                        [--calls 5] [--rounds 7]
WORKDIR is a workflow directory holding vacc/<variant>-fp32/ and vacc/<variant>-int8_*/ (any dataset: the speed
does not depend on the calibration images, the promotions do).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from effzoo import runtime, speed  # noqa: E402
from effzoo.common import Progress  # noqa: E402
from effzoo.cpu_target import REPORTED_FLAGS, cpu_flags, cpu_kind, cpu_name, kernel_isa  # noqa: E402
from effzoo.evidence import ratio_interval  # noqa: E402
from effzoo.ort_session import open_session  # noqa: E402


def op_times(model: str, x: np.ndarray, threads: int, calls: int) -> dict[str, float]:
    """{op type: ms per call} from ONNX Runtime's profile of `calls` runs (one warm-up run not counted)."""
    with tempfile.TemporaryDirectory() as td:
        sess = open_session(model, threads, profile_prefix=str(Path(td) / "profile"))
        name = sess.get_inputs()[0].name
        for _ in range(calls + 1):
            sess.run(["probs"], {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    after_warmup = runs[1]["ts"] if len(runs) > 1 else 0
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= after_warmup:
            per_op[e["args"]["op_name"]] += e["dur"] / 1000.0 / calls
    return dict(per_op)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args(argv)
    vacc = a.workdir / "vacc"
    builds = {"fp32": vacc / f"{a.variant}-fp32" / "model.onnx"}
    builds.update({d.name.split("-", 1)[1]: d / "model.onnx" for d in sorted(vacc.glob(f"{a.variant}-int8_*"))
                   if (d / "model.onnx").exists()})
    size = json.loads((vacc / f"{a.variant}-fp32" / "build.json").read_text())["preprocess"]["input_size"][1]
    x = np.random.default_rng(0).integers(0, 256, (a.batch, size, size, 3), dtype=np.uint8)
    flags = " ".join(sorted(cpu_flags() & REPORTED_FLAGS))
    print(f"{a.variant}, batch {a.batch}, {a.threads} threads; {cpu_name()}, kind {cpu_kind()}, {kernel_isa()} "
          f"kernels, flags {flags}; load average {os.getloadavg()[0]:.2f}\n")
    profiles = {q: op_times(str(m), x, a.threads, a.calls) for q, m in builds.items()}
    ops = sorted({op for p in profiles.values() for op in p},
                 key=lambda op: -max(p.get(op, 0) for p in profiles.values()))
    print("ms per batch by op type (ONNX Runtime's per-node timing, kernels after fusion):\n")
    print("| op type | " + " | ".join(profiles) + " |")
    print("|---|" + "---|" * len(profiles))
    for op in ops:
        print(f"| {op} | " + " | ".join(f"{p[op]:.1f}" if op in p else "" for p in profiles.values()) + " |")
    print("| all kernels | " + " | ".join(f"{sum(p.values()):.1f}" for p in profiles.values()) + " |")
    runners = {q: runtime.open_build(str(m), a.threads)[0] for q, m in builds.items()}   # as predict runs them
    timed = speed.measure(runners, x, a.batch, 3, 1, a.rounds, Progress(a.rounds * len(runners), "interleaved"))
    print(f"\nspeed over fp32, {a.rounds} interleaved rounds x 3 calls (geometric mean of the per-round ratios, "
          f"95% interval):\n")
    print("| build | images/s | x fp32 [95%] |")
    print("|---|---|---|")
    for q, t in timed.items():
        r = ratio_interval([b / f for b, f in zip(t["throughput_rounds"], timed["fp32"]["throughput_rounds"])], 1) \
            if q != "fp32" else (1.0, 1.0, 1.0)
        print(f"| {q} | {t['throughput_ips']:.1f} | {r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}] |")


if __name__ == "__main__":
    main()
