"""Race: every candidate build of a variant timed in one process after its accuracy evidence -> race/<variant>.json,
the deploy decision that deploy/ and the report read."""


rule race:
    input:
        metrics="metrics/{variant}.json",
        builds=expand("vacc/{{variant}}-{quant}/build.json", quant=config["run_quant"]),
        models=deploy_model_files,
    output:
        "race/{variant}.json",
    params:
        builds=lambda w, input: " ".join(f"--build {q} {b}" for q, b in zip(config["run_quant"], input.builds)),
        objective=DEPLOY["objective"],
        batch=max(BENCH["batch_sizes"]),
        threads=BENCH["threads"],
        iterations=DEPLOY["race"]["iterations"],
        warmup=DEPLOY["race"]["warmup"],
        rounds=DEPLOY["race"]["rounds"],
        looks=DEPLOY["race"]["looks"],
        max_builds=f"--max-builds {DEPLOY['race']['max_builds']}" if DEPLOY["race"]["max_builds"] else "",
        tolerance=DEPLOY["speed_tolerance"],
        require=DEPLOY["require"],
        step=step("race"),
    threads: exclusive_threads  # locally all cores: nothing else runs while timing
    resources:
        mem_mb=race_mem_mb,
        runtime=race_runtime,
    log:
        "logs/race/{variant}.log",
    benchmark:
        "benchmarks/race/{variant}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m race --variant {wildcards.variant} --metrics {input.metrics:q} {params.builds}"
        " --objective {params.objective} --batch {params.batch} --threads {params.threads}"
        " --iterations {params.iterations} --warmup {params.warmup} --rounds {params.rounds} --looks {params.looks}"
        " --tolerance {params.tolerance} --require {params.require} {params.max_builds} --out {output:q} 2> {log:q}"
