"""Export: timm model with its weights -> onnx/<variant>.onnx (+ export manifest and preprocessing spec)."""


rule export_onnx:
    input:
        weights_input,
    output:
        onnx="onnx/{variant}.onnx",
        info="onnx/{variant}.json",
        spec="onnx/{variant}.preprocess.json",
    params:
        tag=lambda w: variant_cfg(w.variant)["tag"],
        weights=lambda w: variant_cfg(w.variant)["weights"],
        spec=lambda w: _spec_json(w.variant),
        step=step("export_onnx"),
    threads: 2
    resources:
        mem_mb=job_mem_mb("export_onnx"),
        runtime=job_runtime("export_onnx"),
    log:
        "logs/export_onnx/{variant}.log",
    benchmark:
        "benchmarks/export_onnx/{variant}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m export_onnx --tag {params.tag:q} --weights {params.weights:q} --spec {params.spec:q}"
        " --spec-out {output.spec:q} --out {output.onnx:q} --info {output.info:q} 2> {log:q}"
