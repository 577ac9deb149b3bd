"""What every build shares: its command line, the check of its input model, and its build.json manifest.

build.json records the build's options as used (the workflow passes every option, defaults filled from the
schema), the source model's and the built model's sha256, preprocessing, runtime and package versions, the
fingerprint of the code that made it, and the time and peak memory it took. Two builds from the same inputs
give byte-identical models and manifests equal but for those timings (tested). Speed is measured by the
benchmark step, never here.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import onnx

import fingerprint
from graph_edits import PRE_INPUT
from zoo_common import LOG, ZooError, file_record, read_json, verify_file, write_json

TIMING_KEYS = ("build_s", "build_peak_rss_mb")


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


def parse_options(text: str, quant: str, required: tuple[str, ...]) -> dict:
    """The mode's options; every option the build reads must be there (the workflow fills defaults from
    schemas/config.schema.yaml, the one home of defaults)."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ZooError(f"quant mode {quant!r}: --options is not JSON ({e})") from None
    missing = [k for k in required if k not in options]
    if missing:
        raise ZooError(f"quant mode {quant!r}: options {missing} missing; the workflow fills them from "
                       f"schemas/config.schema.yaml")
    return options


def checked_source(onnx_path: str, export_info_path: str) -> dict:
    """The export manifest, after checking the exported model against the sha256 it recorded."""
    info = read_json(export_info_path)
    verify_file(onnx_path, info["onnx"]["sha256"], export_info_path)
    return info


def runtime_versions() -> dict:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "providers_available": ort.get_available_providers()}


def write_build(step: str, a: argparse.Namespace, kind: str, options: dict, details: dict, export_info: dict,
                spec: dict, t0: float, extra: dict | None = None) -> dict:
    """Write build.json for the model in a.outdir; returns the manifest."""
    model_path = Path(a.outdir) / "model.onnx"
    manifest = {
        "quant": a.quant, "kind": kind, "options": options, "details": details,
        "source_model": {"path": a.onnx, "sha256": export_info["onnx"]["sha256"]},
        "model": file_record(model_path),
        "input": {"name": PRE_INPUT, "dtype": "uint8", "layout": "NHWC"}, "outputs": ["logits", "probs"],
        "preprocess": spec, "weights": export_info["weights"], "tag": export_info["tag"],
        "runtime": runtime_versions(), "provenance": fingerprint.provenance(step),
        "build_s": round(time.monotonic() - t0, 2),
        "build_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **(extra or {}),
    }
    write_json(Path(a.outdir) / "build.json", manifest)
    LOG.info("built %s (%s, %.1f MB)", model_path, a.quant, manifest["model"]["size_mb"])
    return manifest
