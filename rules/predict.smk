"""Predict: run a build over the evaluated dataset's shards -> output/<variant>-<quant>/predictions.csv."""


rule predict:
    input:
        unpack(build_files),
        shards=eval_shards,
    output:
        predictions="output/{variant}-{quant}/predictions.csv",
        logits="output/{variant}-{quant}/logits.npy",
        manifest="output/{variant}-{quant}/predict.json",
    params:
        layout_tuning="on" if INFER["layout_tuning"] else "off",
        batch=INFER["batch"],
        step=step("predict"),
    threads: INFER["threads"]
    resources:
        mem_mb=mem_mb_predict,
        runtime=120,
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
