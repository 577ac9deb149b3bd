"""effzoo: timm EfficientNet -> ONNX -> npz shards -> deployable builds -> predictions -> metrics."""
from snakemake.utils import min_version

min_version("9.0")


# The default config sits beside this file; --configfile FILE updates it (keys given there win).
configfile: f"{workflow.basedir}/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/export.smk"
include: "rules/build.smk"
include: "rules/predict.smk"
include: "rules/metrics.smk"
include: "rules/benchmark.smk"
include: "rules/race.smk"
include: "rules/report.smk"
include: "rules/deploy.smk"


report: "report/workflow.rst"


# Cheap bookkeeping steps run in the main Snakemake process, not as cluster jobs.
localrules:
    all,
    demo_photos,
    dataset_index,
    make_datalist,
    gather_predictions,
    metrics,
    summary,
    deploy,


wildcard_constraints:
    variant=r"[A-Za-z0-9_]+",
    quant=r"[A-Za-z0-9_]+",
    dataset=r"[A-Za-z0-9_.-]+",
    geom=GEOM_RE,
    shard=r"\d{5}",


rule all:
    input:
        expand("metrics/{variant}.json", variant=config["run_variants"]),
        "reports/summary.md",
        # deploy takes the race's choice: only where builds are timed, and where effzoo.load runs the preprocessing
        # the accuracy was measured with (it runs the exact path, not preprocessing.fast)
        expand("deploy/{variant}", variant=config["run_variants"] if BENCH["enabled"] and not PREP["fast"] else []),
    default_target: True


onsuccess:
    print_summary(variants_in_run())
