"""Predict: run a build over the evaluated dataset's shards -> output/<variant>-<quant>/predictions.csv.

A build whose predict job would be planned longer than sizing.max_job_minutes runs as parts over groups of
shards (output/<variant>-<quant>/parts/<first>-<last>/), gathered into the same files, byte for byte.
"""


rule predict:
    input:
        unpack(build_files),
        shards=eval_shards,
    output:
        predictions="output/{variant}-{quant}/predictions.csv",
        logits="output/{variant}-{quant}/logits.npy",
        manifest="output/{variant}-{quant}/predict.json",
    wildcard_constraints:
        variant=parted_builds_re(negate=True),
    params:
        layout_tuning="on" if INFER["layout_tuning"] else "off",
        batch=INFER["batch"],
        bf16_here=bf16_here,
        step=step("predict"),
    threads: INFER["threads"]
    resources:
        mem_mb=job_mem_mb("predict"),
        runtime=job_runtime("predict"),
    log:
        "logs/predict/{variant}-{quant}.log",
    benchmark:
        "benchmarks/predict/{variant}-{quant}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m predict --model {input.model:q} --build-json {input.build:q} --shards {input.shards:q}"
        " --out {output.predictions:q} --logits {output.logits:q} --manifest {output.manifest:q}"
        " --batch {params.batch} --threads {threads} --layout-tuning {params.layout_tuning} 2> {log:q}"


use rule predict as predict_part with:
    input:
        unpack(build_files),
        shards=part_shards,
    output:
        predictions="output/{variant}-{quant}/parts/{first}-{last}/predictions.csv",
        logits="output/{variant}-{quant}/parts/{first}-{last}/logits.npy",
        manifest="output/{variant}-{quant}/parts/{first}-{last}/predict.json",
    wildcard_constraints:
        first=r"\d{5}",
        last=r"\d{5}",
    log:
        "logs/predict/{variant}-{quant}/{first}-{last}.log",
    benchmark:
        "benchmarks/predict/{variant}-{quant}/{first}-{last}.tsv"


rule gather_predictions:
    input:
        unpack(part_files),
    output:
        predictions="output/{variant}-{quant}/predictions.csv",
        logits="output/{variant}-{quant}/logits.npy",
        manifest="output/{variant}-{quant}/predict.json",
    wildcard_constraints:
        variant=parted_builds_re(negate=False),
    params:
        step=step("gather_predictions"),
    log:
        "logs/gather_predictions/{variant}-{quant}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m gather_predictions --manifests {input.manifests:q} --out {output.predictions:q}"
        " --logits {output.logits:q} --manifest {output.manifest:q} 2> {log:q}"
