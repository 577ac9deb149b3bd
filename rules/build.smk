"""Build: onnx/<variant>.onnx -> vacc/<variant>-<quant>/ deployable model + build.json."""


rule build_vacc:
    input:
        onnx="onnx/{variant}.onnx",
        info="onnx/{variant}.json",
        spec="onnx/{variant}.preprocess.json",
    output:
        model="vacc/{variant}-{quant}/model.onnx",
        manifest="vacc/{variant}-{quant}/build.json",
    params:
        options=lambda w: json.dumps(quant_cfg(w.quant), sort_keys=True),
    threads: 2
    resources:
        mem_mb=mem_mb_export,
        runtime=120,
    log:
        "logs/build_vacc/{variant}-{quant}.log",
    benchmark:
        "benchmarks/build_vacc/{variant}-{quant}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m build_vacc --onnx {input.onnx:q} --export-info {input.info:q} --spec-json {input.spec:q}"
        " --quant {wildcards.quant} --options {params.options:q} --outdir vacc/{wildcards.variant}-{wildcards.quant}"
        " 2> {log:q}"
