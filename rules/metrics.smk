"""Metrics: score every configured quant mode of a variant -> metrics/<variant>.json."""


rule metrics:
    input:
        info="onnx/{variant}.json",
        spec="onnx/{variant}.preprocess.json",
        datalist=lambda w: eval_datalist(w.variant),
        skipped=lambda w: eval_skipped(w.variant),
        predictions=expand("output/{{variant}}-{quant}/predictions.csv", quant=config["run_quant"]),
        predict_manifests=expand("output/{{variant}}-{quant}/predict.json", quant=config["run_quant"]),
        builds=expand("vacc/{{variant}}-{quant}/build.json", quant=config["run_quant"]),
        perf=perf_files,
    output:
        "metrics/{variant}.json",
    params:
        modes=metrics_mode_args,
        dataset=DATASET,
        min_agreement=DEPLOY["min_agreement"],
        max_top1_loss=DEPLOY["max_top1_loss"],
        step=step("metrics"),
    log:
        "logs/metrics/{variant}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m metrics --variant {wildcards.variant} --export-info {input.info:q}"
        " --spec-json {input.spec:q} --datalist {input.datalist:q} --skipped {input.skipped:q}"
        " --dataset {params.dataset} {params.modes} --min-agreement {params.min_agreement}"
        " --max-top1-loss {params.max_top1_loss} --out {output:q} 2> {log:q}"
