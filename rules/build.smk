"""Build: onnx/<variant>.onnx -> vacc/<variant>-<quant>/ deployable model + build.json, for the mode's runtime."""


rule build_vacc:
    input:
        unpack(build_inputs),
    output:
        model="vacc/{variant}-{quant}/model.onnx",
        manifest="vacc/{variant}-{quant}/build.json",
    wildcard_constraints:
        quant=quant_re("onnxruntime"),
    params:
        script=build_script,
        options=lambda w: json.dumps(quant_cfg(w.quant), sort_keys=True),
        extra=build_extra_args,
        step=lambda w: step(build_script(w)),
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
        "python -m {params.script} --onnx {input.onnx:q} --export-info {input.info:q} --spec-json {input.spec:q}"
        " --quant {wildcards.quant} --options {params.options:q} --outdir vacc/{wildcards.variant}-{wildcards.quant}"
        " {params.extra} 2> {log:q}"


use rule build_vacc as build_vacc_openvino with:
    output:
        model="vacc/{variant}-{quant}/model.xml",
        weights="vacc/{variant}-{quant}/model.bin",
        manifest="vacc/{variant}-{quant}/build.json",
    wildcard_constraints:
        quant=quant_re("openvino"),


rule calibrate:
    input:
        onnx="onnx/{variant}.onnx",
        info="onnx/{variant}.json",
        spec="onnx/{variant}.preprocess.json",
        datalist=calib_datalist,
        shards=calib_shards,
    output:
        prepped="calib/{variant}/prepped.onnx",
        stats="calib/{variant}/stats.npz",
        manifest="calib/{variant}/calibration.json",
    params:
        images=CALIB["images"],
        validation_images=CALIB["validation_images"],
        seed=CALIB["seed"],
        batch=CALIB["batch"],
        samples=CALIB["samples_per_tensor"],
        bins=CALIB["num_bins"],
        step=step("calibrate"),
    threads: 2
    resources:
        mem_mb=mem_mb_export,
        runtime=600,
    log:
        "logs/calibrate/{variant}.log",
    benchmark:
        "benchmarks/calibrate/{variant}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m calibrate --onnx {input.onnx:q} --export-info {input.info:q} --spec-json {input.spec:q}"
        " --datalist {input.datalist:q} --images {params.images}"
        " --validation-images {params.validation_images} --seed {params.seed} --batch {params.batch}"
        " --samples {params.samples} --num-bins {params.bins} --threads {threads} --prepped {output.prepped:q}"
        " --stats {output.stats:q} --manifest {output.manifest:q} 2> {log:q}"
