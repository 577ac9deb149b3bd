"""What each kind of int8 promotion costs in speed, per runtime, in one interleaved run.

The int8 search promotes layers out of int8 when a build falls short of its accuracy budget (effzoo/int8_search.py).
This measures what that costs: the variant's int8 graph (no promotion) against the same graph with a set of
layers promoted, on ONNX Runtime and on OpenVINO, beside each runtime's fp32 build:
  * float weights, depthwise convs (every depthwise layer);
  * float weights, dense convs (the largest until `--fraction` of the quantized MACs);
  * exact uint8 weights, dense convs (ONNX Runtime only, on the no-VNNI policy's 7-bit graph);
  * float activations: the dense convs' inputs and outputs left unquantized (both runtimes read such a layer as a
    float layer between quantized ones: the same graph as float weights plus float activations).
16-bit activations are not measured: neither runtime's CPU plugin has 16-bit convolution kernels (ONNX Runtime
runs a uint16 QDQ layer as DequantizeLinear + float Conv, as a float promotion).

Prints img/s, the speed over the runtime's fp32 build, the promoted share of the MACs and the slowdown per 1% of
MACs promoted, with the CPU flags. --update writes the slowdowns, and each runtime's unpromoted int8 speed over its
fp32 (the priced speed floor), to effzoo/promotion_cost.json as the entry of this machine's kernel ISA (effzoo/promotion_costs.py), from which the int8 search orders its promotions by accuracy
gained per predicted slowdown.

usage: python tools/promotion_cost.py [--variant tf_efficientnet_lite1] [--workdir bench-out/promotion-cost]
                                      [--fraction 0.1] [--batch 16] [--rounds 5] [--iterations 3] [--update]
Builds the variant on the demo photos first (random ranges are enough for speed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import onnx  # noqa: E402
from _workflow import resolved_config, timing_args  # noqa: E402
from effzoo import runtime, speed  # noqa: E402
from effzoo.build_options import BuildOptions  # noqa: E402
from effzoo.common import Progress  # noqa: E402
from effzoo.cpu_target import REPORTED_FLAGS, cpu_flags, cpu_kind, kernel_isa  # noqa: E402
from effzoo.graph_edits import edge_nodes  # noqa: E402
from effzoo.openvino_ir import save_ir  # noqa: E402
from effzoo.promotion_costs import COST_FILE, ISA_ORDER  # noqa: E402
from effzoo.qdq_graph import has_weight_dq, promoted_model, weight_layers  # noqa: E402
from effzoo.steps.build_int8 import exact_weight_overrides, quantize_model  # noqa: E402

MODES = {"fp32": {"kind": "fp32"},
         "int8_max": {"kind": "int8", "method": "max", "split_min_agreement": 0, "cpu_target": "vnni"},
         "int8_max_avx512": {"kind": "int8", "method": "max", "split_min_agreement": 0, "cpu_target": "avx512"},
         "ov_fp32": {"kind": "fp32", "runtime": "openvino"}}


def run_workflow(work: Path, variant: str) -> None:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.update(run_variants=[variant], run_quant=list(MODES), quant_modes=MODES, benchmark={"enabled": False})
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = [f"vacc/{variant}-{q}/build.json" for q in MODES]
    subprocess.run([sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"), "-d", str(work),
                    "--cores", "2", "--quiet", "rules", "--configfile", str(work / "config.yaml")], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})


def largest_until(layers, fraction: float, total: int) -> list:
    """The largest layers (by MACs) until `fraction` of `total` MACs."""
    out, used = [], 0
    for la in sorted(layers, key=lambda la: -la.macs):
        if used >= fraction * total:
            break
        out.append(la)
        used += la.macs
    return out


def float_activations(model: onnx.ModelProto, layers) -> onnx.ModelProto:
    """`model` with these layers' input and output QuantizeLinear/DequantizeLinear pairs removed (float
    activations around them; their weights float too: the layers run in float between quantized neighbours)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    producer = {o: n for n in m.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    names = {la.name for la in layers}
    drop, rename = set(), {}
    for n in m.graph.node:
        if n.name not in names:
            continue
        dq = producer.get(n.input[0])   # input: Q -> DQ -> layer: the layer reads the Q's float input
        if dq is not None and dq.op_type == "DequantizeLinear":
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and len(consumers.get(dq.output[0], [])) == 1:
                n.input[0] = q.input[0]
                drop.add(dq.name)
                if all(c.name == dq.name for c in consumers.get(q.output[0], [])):
                    drop.add(q.name)
        outs = consumers.get(n.output[0], [])   # output: layer -> Q -> DQ -> consumers: they read the layer
        if len(outs) == 1 and outs[0].op_type == "QuantizeLinear":
            q = outs[0]
            dqs = consumers.get(q.output[0], [])
            if dqs and all(d.op_type == "DequantizeLinear" for d in dqs):
                for d in dqs:
                    rename[d.output[0]] = n.output[0]
                    drop.add(d.name)
                drop.add(q.name)
    keep = [n for n in m.graph.node if n.name not in drop]
    for n in keep:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def graphs_to_time(work: Path, v: str, fraction: float) -> tuple[dict, int]:
    """The graphs timed, name -> (model, its base's name, promoted layers, the slowdown's key in the cost file),
    from the variant's built int8 graphs, and the quantized MACs."""
    prepped_path = str(work / f"calib/{v}/prepped.onnx")
    prepped = onnx.load(prepped_path)
    base = onnx.load(str(work / f"vacc/{v}-int8_max/model.onnx"))
    base7 = onnx.load(str(work / f"vacc/{v}-int8_max_avx512/model.onnx"))
    layers = [la for la in weight_layers(prepped, set(edge_nodes(prepped))) if has_weight_dq(base, la.name)]
    total = sum(la.macs for la in layers)
    depthwise = [la for la in layers if not la.saturating]
    dense = largest_until([la for la in layers if la.saturating], fraction, total)
    build7 = json.loads((work / f"vacc/{v}-int8_max_avx512/build.json").read_text())
    # the build's options over today's defaults (a build made by an older version lacks the newer options)
    options = BuildOptions.parse({**resolved_config()["quant_modes"]["int8_max"], **build7["options"]},
                                 "int8_max_avx512")
    ranges = {n: tuple(r) for n, r in json.loads((work / f"vacc/{v}-int8_max_avx512/calibration.json")
                                                 .read_text())["ranges"].items()}
    exact_path = Path(tempfile.mkdtemp()) / "exact.onnx"
    saturating = [(la.name, la.weight, la.axis) for la in layers if la.saturating]
    quantize_model(prepped_path, ranges, exact_path, options, edge_nodes(prepped),
                   exact_weight_overrides(prepped, saturating, ranges), False)
    exact = onnx.load(str(exact_path))
    return {
        PLAIN: (base, None, [], None),
        "+ float weights, depthwise": (promoted_model(base, [(la, "float") for la in depthwise], prepped, None),
                                       PLAIN, depthwise, "float_depthwise"),
        "+ float weights, dense": (promoted_model(base, [(la, "float") for la in dense], prepped, None),
                                   PLAIN, dense, "float_dense"),
        "+ float weights+activations, dense": (
            float_activations(promoted_model(base, [(la, "float") for la in dense], prepped, None), dense),
            PLAIN, dense, None),
        SEVEN_BIT: (base7, None, [], None),
        "+ exact uint8 weights, dense": (
            promoted_model(base7, [(la, "exact_uint8") for la in dense], prepped, exact),
            SEVEN_BIT, dense, "exact_uint8_dense"),
    }, total


PLAIN, SEVEN_BIT = "int8, vnni policy", "int8, no-VNNI policy (7-bit)"
INT8_POLICY = {PLAIN: "none", SEVEN_BIT: "saturating"}   # graph -> the reduce_range policy it prices


def cost_entry(ips: dict, rows: list, total: int) -> dict:
    """The cost file's figures from the timed graphs (`ips`: img/s per 'runtime: graph'; rows: (key, runtime,
    base key or None, promoted layers, cost key or None)): each promotion's time added per unit share of the
    quantized MACs, and each unpromoted int8 graph's speed over its runtime's fp32."""
    slowdowns: dict[str, dict] = {}
    speeds: dict[str, dict] = {}
    for key, rt, base_key, promoted, cost_key in rows:
        graph = key.split(": ", 1)[1]
        if graph in INT8_POLICY:
            speeds.setdefault(rt, {})[INT8_POLICY[graph]] = round(ips[key] / ips[f"{rt}: fp32"], 3)
        if base_key and cost_key:
            share = sum(la.macs for la in promoted) / total
            per_share = (ips[base_key] / ips[key] - 1) / share   # time added per unit of MAC share
            slowdowns.setdefault(rt, {})[cost_key] = round(max(per_share, 0.0), 3)
    return {"slowdown_per_mac_share": slowdowns, "int8_speed_over_fp32": speeds}


def with_entry(doc: dict, isa: str, entry: dict) -> dict:
    """The cost file's document with `isa`'s entry set (the others as measured), in ISA_ORDER."""
    out = {"meaning": doc.get("meaning", ""), "by_kernel_isa": dict(doc.get("by_kernel_isa", {}))}
    if isa not in ISA_ORDER:
        raise SystemExit(f"kernel ISA {isa!r} is not one of {', '.join(ISA_ORDER)}")
    out["by_kernel_isa"][isa] = entry
    out["by_kernel_isa"] = dict(sorted(out["by_kernel_isa"].items(), key=lambda e: ISA_ORDER.index(e[0])))
    return out


def print_table(ips: dict, rows: list, total: int) -> None:
    print("| graph | img/s | vs its runtime's fp32 | promoted layers | share of MACs | slowdown per 1% of MACs |")
    print("|---|---|---|---|---|---|")
    for rt in ("onnxruntime", "openvino"):
        print(f"| {rt}: fp32 | {ips[f'{rt}: fp32']:.1f} | 1.00x | | | |")
        for key, r, base_key, promoted, _ in rows:
            if r != rt:
                continue
            share = sum(la.macs for la in promoted) / total
            slow = f"{(ips[base_key] / ips[key] - 1) / share:+.1f}%" if base_key else ""   # per 1% of MACs
            print(f"| {key} | {ips[key]:.1f} | {ips[key] / ips[f'{rt}: fp32']:.2f}x | {len(promoted) or ''} | "
                  f"{f'{100 * share:.1f}%' if promoted else ''} | {slow} |")


def timed_graphs(work: Path, v: str, graphs: dict, a) -> tuple[dict, list]:
    """img/s of every graph and of each runtime's fp32 build, in one interleaved run; and the rows."""
    td = Path(tempfile.mkdtemp())
    runners, rows = {}, []
    for rt, fp32 in (("onnxruntime", work / f"vacc/{v}-fp32/model.onnx"),
                     ("openvino", work / f"vacc/{v}-ov_fp32/model.xml")):
        runners[f"{rt}: fp32"] = runtime.open_build(str(fp32), a.threads)[0]
        for name, (model, base_name, promoted, cost_key) in graphs.items():
            if rt == "openvino" and ("no-VNNI" in name or "exact" in name):
                continue   # OpenVINO builds have no 7-bit policy or exact uint8 kernel
            path = td / f"{rt}-{len(runners)}.onnx"
            onnx.save(model, str(path))
            if rt == "openvino":
                save_ir(str(path), td / f"ir-{len(runners)}")
                path = td / f"ir-{len(runners)}" / "model.xml"
            key = f"{rt}: {name}"
            runners[key] = runtime.open_build(str(path), a.threads)[0]
            rows.append((key, rt, f"{rt}: {base_name}" if base_name else None, promoted, cost_key))
    size = json.loads((work / f"vacc/{v}-fp32/build.json").read_text())["preprocess"]["input_size"][1]
    x = np.random.default_rng(0).integers(0, 256, (a.batch, size, size, 3), dtype=np.uint8)
    res = speed.measure(runners, x, a.batch, a.iterations, 2, a.rounds, Progress(a.rounds * len(runners), "promotions"))
    return {k: r["throughput_ips"] for k, r in res.items()}, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    timing_args(ap, "tf_efficientnet_lite1")
    ap.add_argument("--workdir", default=str(REPO / "bench-out" / "promotion-cost"))
    ap.add_argument("--fraction", type=float, default=0.1, help="share of the MACs promoted in the dense sets")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--update", action="store_true", help=f"write this kernel ISA's entry to {COST_FILE.name}")
    a = ap.parse_args()
    work, v = Path(a.workdir).resolve(), a.variant
    if not all((work / f"vacc/{v}-{q}/build.json").exists() for q in MODES):
        run_workflow(work, v)
    graphs, total = graphs_to_time(work, v, a.fraction)
    ips, rows = timed_graphs(work, v, graphs, a)
    flags = " ".join(sorted(cpu_flags() & REPORTED_FLAGS))
    print(f"\n{v}, batch {a.batch}, {a.threads} threads, {a.rounds} interleaved rounds x {a.iterations} calls; "
          f"CPU kind {cpu_kind()}, flags {flags}; load average {os.getloadavg()}")
    print_table(ips, rows, total)
    if a.update:   # this kernel ISA's entry; the others' stay as measured
        isa = kernel_isa()
        doc = json.loads(COST_FILE.read_text()) if COST_FILE.exists() else {}
        entry = {"measured": datetime.date.today().isoformat(), "cpu_flags": flags,
                 "command": "python tools/promotion_cost.py " + " ".join(sys.argv[1:]), "variant": v,
                 "batch": a.batch, "threads": a.threads, **cost_entry(ips, rows, total)}
        COST_FILE.write_text(json.dumps(with_entry(doc, isa, entry), indent=1) + "\n")
        print(f"\nwrote the {isa} entry of {COST_FILE}")


if __name__ == "__main__":
    main()
