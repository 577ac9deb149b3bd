"""Bounded-memory int8 calibration: class-balanced calibration sets and streaming statistics.

ONNX Runtime's histogram calibrators keep every intermediate tensor of every calibration image in RAM
(~62 MB per image for tf_efficientnet_lite0 at 224, ~4 GB per image for b7 at 600). Here the statistics
are computed *inside the graph*: for every tensor to calibrate the model is augmented with ReduceMin,
ReduceMax and a strided sample (Reshape + Slice with a prime step, at most `samples_per_tensor` values per image).
ORT frees each activation as usual, so peak memory is that of plain inference at the calibration batch
size, whatever the number of images. One pass collects what every range method of effzoo.ranges needs
(exact running min/max and a streaming histogram per tensor).

The calibration source is split, seeded and class-balanced, into the range images and a disjoint validation
split on which the int8 builds check their accuracy budget; the fp32 model's top-1 on the split is recorded.

CLI: python -m calibrate --onnx X.onnx --export-info X.json --spec-json S.json --datalist D.tsv --images 1000 \
        --validation-images 200 --seed 0 --batch 4 --samples-per-tensor 32768 --num-bins 2048 --threads 2 \
        --prepped P.onnx \
        --stats S.npz --manifest calibration.json
"""
from __future__ import annotations

import argparse
import hashlib
import io
import resource
import time

import numpy as np

import onnx
from effzoo import fingerprint
from effzoo.calibration_split import calibration_split
from effzoo.common import LOG, Progress, atomic_path, file_record, read_json, verify_file, write_json
from effzoo.graph_edits import fold_preprocessing
from effzoo.ort_session import open_session
from effzoo.ranges import TensorStats, stats_to_arrays
from effzoo.shard_io import iter_datalist_rows, read_datalist
from onnx import TensorProto, helper, numpy_helper

# --------------------------------------------------------------------------------------------------
# graph augmentation


def tensors_to_calibrate(model: onnx.ModelProto) -> list[str]:
    """Float tensors that are inputs/outputs of nodes (not initializers), as ORT's calibrators select them."""
    vi = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    inits = {i.name for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        for t in list(node.input) + list(node.output):
            if t in vi and t not in inits and t not in names:
                tt = vi[t].type.tensor_type
                if tt.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16):
                    names.append(t)
    return names


def _numel_per_image(model: onnx.ModelProto, name: str) -> int:
    for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if v.name == name:
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim[1:]]
            return int(np.prod(dims)) if dims else 1
    return 1


def _prime_at_least(n: int) -> int:
    n = max(2, n)
    while any(n % p == 0 for p in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def augment(model: onnx.ModelProto, names: list[str], samples_per_tensor: int) -> tuple[onnx.ModelProto, dict]:
    """Add per-tensor ReduceMin/ReduceMax and a strided sample (about `samples_per_tensor` values per image) as outputs;
    returns (model, sampling step per tensor)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "calib__flat"))
    g.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "calib__zero"))
    g.initializer.append(numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "calib__end"))
    del g.output[:]
    steps = {}
    dtypes = {v.name: v.type.tensor_type.elem_type for v in
              list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    stat_nodes: dict[str, list] = {}
    for i, t in enumerate(names):
        step = _prime_at_least(int(np.ceil(_numel_per_image(model, t) / samples_per_tensor)))
        steps[t] = step
        g.initializer.append(numpy_helper.from_array(np.array([step], np.int64), f"calib__step{i}"))
        first = (helper.make_node("Identity", [t], [f"calib__f{i}"]) if dtypes.get(t) == TensorProto.FLOAT
                 else helper.make_node("Cast", [t], [f"calib__f{i}"], to=TensorProto.FLOAT))
        stat_nodes[t] = [
            first,
            helper.make_node("ReduceMin", [f"calib__f{i}"], [f"calib__min{i}"], keepdims=0),
            helper.make_node("ReduceMax", [f"calib__f{i}"], [f"calib__max{i}"], keepdims=0),
            helper.make_node("Reshape", [f"calib__f{i}", "calib__flat"], [f"calib__flat{i}"]),
            helper.make_node("Slice", [f"calib__flat{i}", "calib__zero", "calib__end", "calib__zero",
                                       f"calib__step{i}"], [f"calib__sample{i}"]),
        ]
        for kind in ("min", "max", "sample"):
            g.output.append(helper.make_tensor_value_info(f"calib__{kind}{i}", TensorProto.FLOAT, None))
    # Each tensor's statistics run right after its producer, so the tensor is freed as in plain inference
    # (appended at the end, every activation would stay alive until the end of the graph: 9.6 GB for b7).
    ordered = [n for t in names if t in {i.name for i in model.graph.input} for n in stat_nodes.pop(t)]
    for node in model.graph.node:
        ordered.append(node)
        for out in node.output:
            ordered.extend(stat_nodes.pop(out, []))
    for rest in stat_nodes.values():
        ordered.extend(rest)
    del g.node[:]
    g.node.extend(ordered)
    return m, steps


def reference_top1(prepped: str, datalist: str, rows: list[int], batch: int, threads: int) -> tuple[list, list, list]:
    """(files, top-1 class, top-1 minus top-2 probability) of the calibrated float model on these rows: the fp32
    reference of the int8 builds' accuracy budget (the statistics pass's session options: the same bounded
    memory)."""
    if not rows:
        return [], [], []
    sess = open_session(onnx.load(prepped), threads, bounded_memory=True)
    files, top1, margin = [], [], []
    progress = Progress(len(rows), "fp32 reference on the validation split")
    for x, bfiles in iter_datalist_rows(datalist, rows, batch):
        files.extend(bfiles)
        probs = sess.run(["probs"], {sess.get_inputs()[0].name: x})[0]
        best = np.sort(probs, axis=1)[:, -2:]
        top1.extend(int(t) for t in probs.argmax(axis=1))
        margin.extend(round(float(m), 6) for m in best[:, 1] - best[:, 0])
        progress.update(len(x))
    return files, top1, margin


def npz_bytes(arrs: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrs)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# CLI: collect statistics for a variant


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True, help="exported model (onnx/<variant>.onnx)")
    ap.add_argument("--export-info", required=True, help="its export manifest (records its sha256)")
    ap.add_argument("--spec-json", required=True)
    ap.add_argument("--datalist", required=True, help="datalist.tsv of the calibration source at this geometry")
    ap.add_argument("--images", type=int, required=True, help="range images")
    ap.add_argument("--validation-images", type=int, required=True,
                    help="validation split for the int8 accuracy budget (disjoint from the range images)")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--samples-per-tensor", type=int, required=True, help="sampled values per tensor per image")
    ap.add_argument("--num-bins", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prepped", required=True, help="output: the float model that is calibrated and quantized")
    ap.add_argument("--stats", required=True, help="output: statistics npz")
    ap.add_argument("--manifest", required=True, help="output: calibration.json")
    return ap


def write_prepped(onnx_path: str, spec: dict, out: str) -> onnx.ModelProto:
    """The float model with preprocessing folded in, through ONNX Runtime's quant_pre_process, written atomically."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folded = fold_preprocessing(onnx.load(onnx_path), spec)
    with atomic_path(out, ".onnx") as tmp:
        raw = tmp.with_suffix(".raw.onnx")
        try:
            onnx.save(folded, str(raw))
            quant_pre_process(str(raw), str(tmp))
        finally:
            raw.unlink(missing_ok=True)
    return onnx.load(out)


def collect_stats(prepped: onnx.ModelProto, names: list[str], a: argparse.Namespace, chosen: list[int]
                  ) -> tuple[dict, list[str], str]:
    """(statistics per tensor, the files in the order read, sha256 of their pixels) over the range images."""
    aug, _ = augment(prepped, names, a.samples_per_tensor)
    sess = open_session(aug, a.threads, bounded_memory=True)
    del aug
    stats = {n: TensorStats(a.num_bins) for n in names}
    digest = hashlib.sha256()
    progress = Progress(len(chosen), "calibration")
    files = []
    in_name = sess.get_inputs()[0].name
    for batch, bfiles in iter_datalist_rows(a.datalist, chosen, a.batch):
        digest.update(batch.tobytes())
        files.extend(bfiles)
        outs = sess.run(None, {in_name: batch})
        for i, n in enumerate(names):
            stats[n].update(outs[3 * i], outs[3 * i + 1], outs[3 * i + 2])
        progress.update(len(batch))
    return stats, files, digest.hexdigest()


def main(argv=None):
    a = parser().parse_args(argv)
    t0 = time.monotonic()
    verify_file(a.onnx, read_json(a.export_info, "export")["onnx"]["sha256"], a.export_info)
    prepped = write_prepped(a.onnx, read_json(a.spec_json, "spec"), a.prepped)
    names = tensors_to_calibrate(prepped)
    rows = read_datalist(a.datalist)
    chosen, val_rows = calibration_split([r[3] for r in rows], a.images, a.validation_images, a.seed)
    n_classes = len({rows[i][3] for i in chosen})
    if len(chosen) < a.images or len(val_rows) < a.validation_images:
        LOG.warning("calibration source has %d images, fewer than the %d range + %d validation images asked "
                    "for: %d range + %d validation", len(rows), a.images, a.validation_images, len(chosen),
                    len(val_rows))
    stats, files, content_sha256 = collect_stats(prepped, names, a, chosen)
    with atomic_path(a.stats, ".npz") as tmp:
        tmp.write_bytes(npz_bytes(stats_to_arrays(stats)))
    val_files, val_top1, val_margin = reference_top1(a.prepped, a.datalist, val_rows, a.batch, a.threads)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    manifest = {
        "images": len(chosen), "images_requested": a.images, "classes_represented": n_classes,
        "classes_in_source": len({r[3] for r in rows}), "seed": a.seed, "batch": a.batch,
        "source_datalist": a.datalist, "content_sha256": content_sha256, "files": files,
        "validation": {"images": len(val_rows), "images_requested": a.validation_images,
                       "classes_represented": len({rows[i][3] for i in val_rows}), "files": val_files,
                       "fp32_top1": val_top1, "fp32_margin": val_margin,
                       "reference": "the calibrated float model (ONNX Runtime, fp32)"},
        "tensors": len(names), "samples_per_tensor": a.samples_per_tensor, "num_bins": a.num_bins,
        "prepped": file_record(a.prepped), "stats": file_record(a.stats),
        "provenance": fingerprint.provenance("calibrate"),
        "calibration_s": round(time.monotonic() - t0, 2), "peak_rss_mb": round(peak_mb, 1),
        "method": "in-graph ReduceMin/ReduceMax + strided samples -> streaming histograms (bounded memory)",
    }
    write_json(a.manifest, manifest)
    LOG.info("calibrated %d tensors on %d images (%d classes) in %.1fs, peak RSS %.0f MB", len(names),
             len(chosen), n_classes, manifest["calibration_s"], peak_mb)
