"""What every build shares: its command line, the check of its input model, and its build.json manifest.

build.json records the build's options as used (the workflow passes every option, defaults filled from the
schema), the source model's and every built file's sha256, the runtime the build is for and the CPU it is made
for (and what it requires of the CPU that runs it: effzoo/cpu_target.py), preprocessing, package versions, the
fingerprint of the code that made it, and the time and peak memory it took. On the same CPU kind and package
versions, two builds from the same inputs give byte-identical model files and manifests equal but for
MEASUREMENT_KEYS (tested, an int8 search that promotes layers on a loaded machine included): nothing timed
decides a build's bytes. Speed is measured by the benchmark step and the race; what an int8 search times on its
split is recorded under `measured` and decides nothing.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import onnx
from effzoo import cpu_target, fingerprint
from effzoo.build_options import BuildOptions
from effzoo.common import LOG, file_record, read_json, verify_file, write_json
from effzoo.graph_edits import PRE_INPUT

# build.json's measurements (dotted paths): seconds, peak memory and the int8 search's timings; the only keys in
# which two builds from the same inputs may differ
MEASUREMENT_KEYS = ("build_s", "build_peak_rss_mb", "calibration.calibration_s", "calibration.peak_rss_mb",
                    "details.accuracy_budget.measured")
MODEL_FILES = {"onnxruntime": ("model.onnx",), "openvino": ("model.xml", "model.bin")}


def without_measurements(manifest: dict) -> dict:
    """A copy of a build.json without MEASUREMENT_KEYS: what two builds from the same inputs agree on."""
    out = json.loads(json.dumps(manifest))
    for key in MEASUREMENT_KEYS:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def build_parser(doc: str) -> argparse.ArgumentParser:
    """Arguments every build takes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True, help="exported model (onnx/<variant>.onnx)")
    ap.add_argument("--export-info", required=True, help="its export manifest (records its sha256)")
    ap.add_argument("--spec-json", required=True)
    ap.add_argument("--quant", required=True, help="quant mode name")
    ap.add_argument("--options", required=True, help="JSON options of the quant mode, every option given")
    ap.add_argument("--outdir", required=True)
    return ap


def checked_source(onnx_path: str, export_info_path: str) -> dict:
    """The export manifest, after checking the exported model against the sha256 it recorded."""
    info = read_json(export_info_path, "export")
    verify_file(onnx_path, info["onnx"]["sha256"], export_info_path)
    return info


def runtime_versions(runtime: str) -> dict:
    import onnxruntime as ort

    out = {"runtime": runtime, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
           "python": platform.python_version(), "machine": platform.machine()}
    if runtime == "openvino":
        import openvino as ov

        out["openvino"] = ov.__version__
    return out


def cpu_record(options: BuildOptions, requires: str, why: str) -> dict:
    """build.json's 'cpu': the target it is made for, the machine that made it, what it requires of the CPU that
    runs it and why, and what predict and benchmark do on a CPU that lacks it; the kernel ISA its accuracy
    record was measured on, and whether its outputs follow that ISA (OpenVINO int8 and bf16: cpu_target.isa_note);
    a bf16 build also requires avx512_bf16 or amx_bf16 (requires_flags)."""
    record = {"target": options.target, "target_option": options.cpu_target,
              "build_host": cpu_target.cpu_kind(), "requires": requires, "why": why,
              "on_mismatch": options.on_cpu_mismatch, "checked_isa": cpu_target.kernel_isa(),
              "isa_sensitive": options.runtime == "openvino" and options.kind in ("int8", "bf16")}
    if options.kind == "bf16":   # AMX and AVX512_BF16 kernels: until measured equal, outputs follow the ISA
        record.update(requires_flags=list(cpu_target.BF16_FLAGS), checked_isa=cpu_target.bf16_isa())
    return record


def write_build(step: str, a: argparse.Namespace, kind: str, options: BuildOptions, details: dict, export_info: dict,
                spec: dict, t0: float, cpu: dict, extra: dict | None = None) -> dict:
    """Write build.json for the model files in a.outdir; returns the manifest."""
    outdir = Path(a.outdir)
    files = {name: {k: v for k, v in file_record(outdir / name).items() if k != "path"}
             for name in MODEL_FILES[options.runtime]}
    model_path = outdir / MODEL_FILES[options.runtime][0]
    manifest = {
        "quant": a.quant, "kind": kind, "options": options.as_given(), "details": details,
        "source_model": {"path": a.onnx, "sha256": export_info["onnx"]["sha256"]},
        "model": {"path": str(model_path), "size_mb": round(sum(f["size_mb"] for f in files.values()), 3)},
        "files": files, "cpu": cpu,
        "input": {"name": PRE_INPUT, "dtype": "uint8", "layout": "NHWC"}, "outputs": ["logits", "probs"],
        "preprocess": spec, "weights": export_info["weights"], "tag": export_info["tag"],
        "runtime": runtime_versions(options.runtime), "provenance": fingerprint.provenance(step),
        "build_s": round(time.monotonic() - t0, 2),
        "build_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **(extra or {}),
    }
    write_json(Path(a.outdir) / "build.json", manifest)
    LOG.info("built %s (%s, %.1f MB)", model_path, a.quant, manifest["model"]["size_mb"])
    return manifest

