"""Build: onnx/<variant>.onnx -> vacc/<variant>-<quant>/ deployable model + build.json, for the mode's runtime.

Float modes (fp32, fp16, bf16) run build_float; int8 modes run build_int8 on the variant's calibration. An OpenVINO
build writes model.xml + model.bin instead of model.onnx: the `_openvino` rules are the same steps with those
outputs.
"""


rule build_float:
    input:
        onnx="onnx/{variant}.onnx",
        info="onnx/{variant}.json",
        spec="onnx/{variant}.preprocess.json",
    output:
        model="vacc/{variant}-{quant}/model.onnx",
        manifest="vacc/{variant}-{quant}/build.json",
    wildcard_constraints:
        quant=quant_re("onnxruntime", ("fp32", "fp16")),
    params:
        options=lambda w: json.dumps(quant_cfg(w.quant), sort_keys=True),
        step=step("build_float"),
    threads: 2
    resources:
        mem_mb=job_mem_mb("build_float"),
        runtime=job_runtime("build_float"),
    log:
        "logs/build_float/{variant}-{quant}.log",
    benchmark:
        "benchmarks/build_float/{variant}-{quant}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m build_float --onnx {input.onnx:q} --export-info {input.info:q} --spec-json {input.spec:q}"
        " --quant {wildcards.quant} --options {params.options:q} --outdir vacc/{wildcards.variant}-{wildcards.quant}"
        " 2> {log:q}"


use rule build_float as build_float_openvino with:
    output:
        model="vacc/{variant}-{quant}/model.xml",
        weights="vacc/{variant}-{quant}/model.bin",
        manifest="vacc/{variant}-{quant}/build.json",
    wildcard_constraints:
        quant=quant_re("openvino", ("fp32", "bf16")),


rule build_int8:
    input:
        onnx="onnx/{variant}.onnx",
        info="onnx/{variant}.json",
        spec="onnx/{variant}.preprocess.json",
        prepped="calib/{variant}/prepped.onnx",
        stats="calib/{variant}/stats.npz",
        calibration="calib/{variant}/calibration.json",
        calib_datalist=calib_datalist,
        calib_shards=calib_shards,
    output:
        model="vacc/{variant}-{quant}/model.onnx",
        manifest="vacc/{variant}-{quant}/build.json",
    wildcard_constraints:
        quant=quant_re("onnxruntime", ("int8",)),
    params:
        options=lambda w: json.dumps(quant_cfg(w.quant), sort_keys=True),
        step=step("build_int8"),
    threads: 2
    resources:
        mem_mb=job_mem_mb("build_int8"),
        runtime=job_runtime("build_int8"),
    log:
        "logs/build_int8/{variant}-{quant}.log",
    benchmark:
        "benchmarks/build_int8/{variant}-{quant}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m build_int8 --onnx {input.onnx:q} --export-info {input.info:q} --spec-json {input.spec:q}"
        " --quant {wildcards.quant} --options {params.options:q} --outdir vacc/{wildcards.variant}-{wildcards.quant}"
        " --prepped {input.prepped:q} --stats {input.stats:q} --calibration {input.calibration:q}"
        " --calib-datalist {input.calib_datalist:q} 2> {log:q}"


use rule build_int8 as build_int8_openvino with:
    output:
        model="vacc/{variant}-{quant}/model.xml",
        weights="vacc/{variant}-{quant}/model.bin",
        manifest="vacc/{variant}-{quant}/build.json",
    wildcard_constraints:
        quant=quant_re("openvino", ("int8",)),


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
        samples_per_tensor=CALIB["samples_per_tensor"],
        bins=CALIB["num_bins"],
        step=step("calibrate"),
    threads: 2
    resources:
        mem_mb=job_mem_mb("calibrate"),
        runtime=job_runtime("calibrate"),
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
        " --samples-per-tensor {params.samples_per_tensor} --num-bins {params.bins} --threads {threads} --prepped {output.prepped:q}"
        " --stats {output.stats:q} --manifest {output.manifest:q} 2> {log:q}"


rule unknown_quant_mode:
    """A vacc/ target with a quant mode that is not configured: a clear error listing the valid ones."""
    input:
        lambda w: quant_cfg(w.quant),
    output:
        "vacc/{variant}-{quant}/model.onnx",
        "vacc/{variant}-{quant}/build.json",
    wildcard_constraints:
        quant=unknown_quant_re(),
    log:
        "logs/unknown_quant_mode/{variant}-{quant}.log",
    conda:
        CONDA_ENV
    shell:
        "false"


use rule unknown_quant_mode as unknown_quant_mode_openvino with:
    output:
        "vacc/{variant}-{quant}/model.xml",
        "vacc/{variant}-{quant}/model.bin",
        "vacc/{variant}-{quant}/build.json",
    log:
        "logs/unknown_quant_mode/{variant}-{quant}-openvino.log",
