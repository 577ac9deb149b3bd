"""Job sizes from measured cost: the runtime, memory and parts of every job, scaled by variant, images and threads.

The cost file (effzoo/zoo_cost.json, written by tools/zoo_cost.py on real jobs of every architecture) holds, per
architecture and stage, a fixed cost, a per-image cost (wall seconds at the measured threads) and the job's peak
memory. A job's planned runtime is safety x (fixed + images x per_image x thread scaling); the threads scale the
per-image part by Amdahl's law with the parallel fraction measured between 1 and 2 threads. Standard library
only: the workflow reads it at parse time.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from effzoo.calibration_split import split_sizes
from effzoo.common import ZooError

COST_FILE = Path(__file__).with_name("zoo_cost.json")
FORMAT = 1
STAGES = ("make_shards", "export_onnx", "calibrate", "build_float", "build_int8", "predict", "benchmark")
BUILD_KINDS = ("onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8", "openvino-fp32", "openvino-int8")
SEARCH_BATCH = 16   # the int8 search's trial batch (int8_trials.TRIAL_BATCH; this module stays free of onnx)


@dataclass(frozen=True)
class Cost:
    """A job's measured cost at the reference threads: fixed seconds, seconds per image, peak memory (MB); a job
    that goes over its images several times (the int8 build's accuracy-budget trials) has `passes`, each with a
    fixed part of its own (opening the trial's session)."""
    fixed_s: float
    per_image_s: float
    peak_mb: float
    per_pass_s: float = 0.0
    passes: int = 1


# Build kinds priced with another's measured costs, and why: a bf16 build is the fp32 IR compiled at bf16, which
# builds as the fp32 IR does and, on the CPUs where it runs at all (bf16 flags), predicts faster than fp32
# (2.28x for lite0, docs/results.md): fp32's cost is an upper bound that never asks a job for too little.
PRICED_AS = {"openvino-bf16": "openvino-fp32"}


def build_kind(quant_options: dict) -> str:
    """runtime-precision of a quant mode's builds (onnxruntime-int8, openvino-fp32, ...), as the cost file prices it
    (PRICED_AS)."""
    kind = f"{quant_options['runtime']}-{quant_options['kind']}"
    return PRICED_AS.get(kind, kind)


def shard_storage(size: int, png_from_size: int | None) -> str:
    """How shards of a crop size keep their rows: "png" from preprocessing.png_from_size up, else "raw"."""
    return "png" if png_from_size is not None and size >= png_from_size else "raw"


def arch_of(tag: str) -> str:
    """The timm architecture of a tag: tf_efficientnet_b7.ra_in1k -> tf_efficientnet_b7."""
    return tag.split(".")[0]


def amdahl(parallel_fraction: float, threads: int, reference_threads: int) -> float:
    """Time at `threads` over time at `reference_threads` for a job with this parallel fraction."""
    p = min(max(parallel_fraction, 0.0), 1.0)
    return ((1 - p) + p / threads) / ((1 - p) + p / reference_threads)


class CostModel:
    """The measured costs of one cost file, and the job sizes they give."""

    def __init__(self, doc: dict, source: str):
        self.source = source
        if doc.get("format") != FORMAT:
            raise ZooError(f"{source}: format {doc.get('format')!r}, expected {FORMAT}: remeasure with "
                           f"tools/zoo_cost.py measure")
        try:
            self.reference_threads = int(doc["reference_threads"])
            self.archs = doc["architectures"]
            self.geometries = {int(k): v for k, v in doc["geometries"].items()}
            self.shard_parallel_fraction = float(doc["shard_parallel_fraction"])
        except (KeyError, TypeError, ValueError) as e:
            raise ZooError(f"{source}: missing or bad field {e}: remeasure with tools/zoo_cost.py measure") from None
        if not self.archs or not self.geometries:
            raise ZooError(f"{source}: no architectures or geometries measured")
        self.png = {int(k): v for k, v in doc.get("png_storage", {}).get("sizes", {}).items()}
        self.doc = doc

    # --- lookups ---
    def _arch(self, arch: str, input_size: int) -> tuple[dict, float]:
        """The measured entry of an architecture and the pixel ratio to its measured size. An architecture that
        was not measured takes the costliest per pixel of those measured (never less than needed)."""
        entry = self.archs.get(arch)
        if entry is None:
            entry = max(self.archs.values(), key=lambda e: e["stages"]["predict"]["onnxruntime-fp32"]["per_image_s"]
                        / e["input_size"] ** 2)
        return entry, (input_size / entry["input_size"]) ** 2

    def stage(self, stage: str, arch: str, input_size: int, kind: str | None = None,
              batch: int | None = None) -> tuple[Cost, float]:
        """(cost at `input_size`, parallel fraction) of a stage: per-image cost and memory scaled by the pixels.
        `kind` is the build kind (runtime-precision) of build, predict and benchmark stages. An int8 build's
        predict and benchmark take the slower of it and the same runtime's fp32: int8 speed depends on the CPU
        kind (VNNI or not) and on the build's promotions, and a job must not ask for less than it needs. Their
        memory above the loaded model (`base_mb`) grows with the batch past the measured one (`batch`)."""
        if stage not in STAGES or stage == "make_shards":
            raise ZooError(f"cost: unknown stage {stage!r}; stages: {', '.join(STAGES[1:])}")
        entry, ratio = self._arch(arch, input_size)
        rec = entry["stages"][stage]
        if kind is not None:
            if kind not in rec:
                raise ZooError(f"{self.source}: {arch}: no {stage} cost for {kind}; measured: {', '.join(rec)}")
            measured = rec[kind]
            fp32 = rec.get(kind.replace("int8", "fp32"))
            if stage in ("predict", "benchmark") and kind.endswith("int8") and fp32:
                measured = {k: max(measured.get(k, 0.0), fp32.get(k, 0.0)) for k in set(measured) | set(fp32)}
            rec = measured
        peak = rec["peak_mb"]
        if batch and rec.get("batch") and batch > rec["batch"]:
            base = min(rec.get("base_mb", 0.0), peak)
            peak = base + (peak - base) * batch / rec["batch"]
        return Cost(rec["fixed_s"], rec.get("per_image_s", 0.0) * ratio, peak * max(ratio, 1.0),
                    rec.get("per_pass_s", 0.0), int(rec.get("passes", 1))), entry["parallel_fraction"]

    def _geometry(self, size: int) -> tuple[dict, float]:
        """The measured crop size nearest `size` and the pixel ratio to it."""
        near = min(self.geometries, key=lambda s: abs(s - size))
        return self.geometries[near], (size / near) ** 2

    def shard_cost(self, size: int) -> Cost:
        """Preprocessing cost per image at a crop size (nearest measured size, scaled up by the pixels)."""
        rec, ratio = self._geometry(size)
        return Cost(rec["fixed_s"], rec["per_image_s"] * max(ratio, 1.0), rec["peak_mb"])

    def bytes_per_image(self, size: int) -> float:
        """Bytes of one image in a shard at a crop size (measured shard files, scaled by the pixels)."""
        rec, ratio = self._geometry(size)
        return rec["bytes_per_image"] * ratio

    def png_cost(self, size: int) -> tuple[float, float, float]:
        """(size ratio raw / PNG, encode seconds, decode seconds) of one image stored as PNG at a crop size (the
        nearest measured size, times scaled by the pixels)."""
        if not self.png:
            raise ZooError(f"{self.source}: no PNG storage measured; measure it with tools/zoo_cost.py disk "
                           f"--update, or set preprocessing.png_from_size: null")
        near = min(self.png, key=lambda s: abs(s - size))
        rec, ratio = self.png[near], (size / near) ** 2
        return rec["size_ratio"], rec["encode_ms"] * ratio / 1e3, rec["decode_ms"] * ratio / 1e3

    def stored_bytes_per_image(self, size: int, storage: str) -> float:
        """Bytes of one image in a shard as stored ("raw" or "png")."""
        raw = self.bytes_per_image(size)
        return raw / self.png_cost(size)[0] if storage == "png" else raw

    # --- sizes ---
    def seconds(self, cost: Cost, parallel_fraction: float, images: float, threads: int) -> float:
        """Planned wall seconds of a job (unscaled by the safety factor)."""
        scale = amdahl(parallel_fraction, threads, self.reference_threads)
        return cost.fixed_s + cost.passes * (cost.per_pass_s + images * cost.per_image_s * scale)


@dataclass(frozen=True)
class Sizing:
    """The sizing settings of the config's `sizing` section."""
    safety_factor: float
    min_runtime_minutes: int
    max_job_minutes: int
    min_mem_mb: int

    def runtime_minutes(self, seconds: float, attempt: int = 1) -> int:
        """Minutes to ask for: safety x seconds, at least the floor, doubled on each retry."""
        return max(self.min_runtime_minutes, math.ceil(self.safety_factor * seconds / 60)) * attempt

    def mem_mb(self, peak_mb: float, attempt: int = 1) -> int:
        return max(self.min_mem_mb, math.ceil(self.safety_factor * peak_mb)) * attempt


def load(path: str | Path | None = None) -> CostModel:
    """Read a cost file (the shipped one by default); a clear error naming it otherwise."""
    path = Path(path) if path else COST_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZooError(f"{path}: cost file not found (sizing.cost_file); measure one with tools/zoo_cost.py "
                       f"measure --out {path}") from None
    except json.JSONDecodeError as e:
        raise ZooError(f"{path}: not valid JSON ({e})") from None
    return CostModel(doc, str(path))


def split_parts(n_shards: int, shard_seconds: float, fixed_seconds: float,
                limit_seconds: float) -> list[tuple[int, int]]:
    """Contiguous shard ranges [first, last] such that each part's planned seconds (fixed + its shards) stay
    within the limit, as few parts as that allows and of near-equal size; one part when all fit."""
    if n_shards <= 0:
        return []
    per_part = max(1, int((limit_seconds - fixed_seconds) // shard_seconds)) if shard_seconds > 0 else n_shards
    parts = math.ceil(n_shards / min(per_part, n_shards))
    base, extra = divmod(n_shards, parts)
    ranges, first = [], 0
    for i in range(parts):
        count = base + (1 if i < extra else 0)
        ranges.append((first, first + count - 1))
        first += count
    return ranges


@dataclass(frozen=True)
class Workload:
    """The images each kind of job goes over, from a validated config and the datasets' sizes."""
    dataset_images: int
    shard_size: int
    calibration_images: int
    split_images: int
    benchmark_images: int
    predict_batch: int = 1
    benchmark_batch: int = 1

    @classmethod
    def from_config(cls, config: dict, dataset_images: int, calibration_source_images: int) -> "Workload":
        cal, bench = config["calibration"], config["benchmark"]
        # a small source is shared between range and split images as calibrate shares it
        range_images, split = split_sizes(calibration_source_images, cal["images"], cal["validation_images"])
        return cls(dataset_images, config["preprocessing"]["shard_size"], range_images, split,
                   bench["rounds"] * (bench["iterations"] + bench["warmup"]) * sum(bench["batch_sizes"])
                   * bench["instances"], config["inference"]["batch"], max(bench["batch_sizes"]))

    def images(self, stage: str, first_shard: int = 0, last_shard: int | None = None) -> int:
        """Images one job of a stage goes over (predict: the shards first..last, all by default; calibrate: the
        range images, its split images are counted apart)."""
        if stage == "make_shards":
            return self.shard_size
        if stage == "predict":
            end = self.dataset_images if last_shard is None else min(self.dataset_images,
                                                                      (last_shard + 1) * self.shard_size)
            return end - first_shard * self.shard_size
        return {"calibrate": self.calibration_images, "build_int8": self.split_images,
                "benchmark": self.benchmark_images}.get(stage, 0)

    def batch(self, stage: str) -> int | None:
        """The largest batch a job of the stage runs (its memory grows with it)."""
        return {"predict": self.predict_batch, "benchmark": self.benchmark_batch}.get(stage)


def job_seconds(model: CostModel, stage: str, arch: str, input_size: int, kind: str | None, threads: int,
                images: int, split_images: int = 0, batch: int | None = None,
                storage: str = "raw") -> tuple[float, float]:
    """(planned wall seconds before the safety factor, peak MB) of one job; calibrate also runs its split images
    through the float model once (at predict's fp32 cost). `storage` is how the shards the job writes or reads
    keep their rows."""
    png = storage == "png" and stage in ("make_shards", "calibrate", "build_int8", "predict")
    if stage == "make_shards":   # memory: the job's measured peak, with the shard's images held in memory
        c, parallel = model.shard_cost(input_size), model.shard_parallel_fraction
        held = model.bytes_per_image(input_size) + (model.stored_bytes_per_image(input_size, storage) if png else 0)
        c = Cost(c.fixed_s, c.per_image_s + (model.png_cost(input_size)[1] if png else 0.0),
                 c.peak_mb + images * held / 1e6)
    else:
        c, parallel = model.stage(stage, arch, input_size, kind if stage in KIND_STAGES else None, batch)
    seconds = model.seconds(c, parallel, images, threads)
    if png and stage != "make_shards":   # each image read is decoded once, in the job's main thread
        seconds += (images + split_images) * model.png_cost(input_size)[2]
    if stage == "calibrate" and split_images:
        fp32, _ = model.stage("predict", arch, input_size, "onnxruntime-fp32")
        seconds += split_images * fp32.per_image_s * amdahl(parallel, threads, model.reference_threads)
    peak = c.peak_mb
    if stage == "build_int8" and images:
        # the accuracy budget's search (its images: the split) holds the fp32 model's session and a trial graph's
        # at SEARCH_BATCH at once: b7 at 600 peaked at 10458 MB against 3262 MB measured without a split
        fp32, _ = model.stage("predict", arch, input_size, kind.split("-")[0] + "-fp32", SEARCH_BATCH)
        peak += 2 * fp32.peak_mb
    return seconds, peak


KIND_STAGES = ("build_float", "build_int8", "predict", "benchmark")


def race_seconds(model: CostModel, arch: str, input_size: int, kinds: list[str], threads: int, images: int,
                 batch: int, max_builds: int | None = None) -> tuple[float, float]:
    """(planned wall seconds before the safety factor, peak MB) of a race: every candidate's session open at once
    (each at predict's measured memory at the race's batch), each running `images` images at predict's cost; with
    `max_builds`, the costliest that many."""
    costs = sorted((model.stage("predict", arch, input_size, kind, batch) for kind in kinds),
                   key=lambda c: -c[0].peak_mb)[:max_builds or None]
    return (sum(model.seconds(c, parallel, images, threads) for c, parallel in costs),
            sum(c.peak_mb for c, _ in costs))
