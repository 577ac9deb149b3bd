"""Deploy: the build race/<variant>.json chose -> deploy/<variant>/ (effzoo classify, effzoo.load)."""


rule deploy:
    input:
        race="race/{variant}.json",
        metrics="metrics/{variant}.json",
        classes=f"npz/{DATASET}/classes.txt",
        builds=expand("vacc/{{variant}}-{quant}/build.json", quant=config["run_quant"]),
        models=deploy_model_files,
    output:
        directory("deploy/{variant}"),
    params:
        builds=lambda w, input: " ".join(f"--build {q} {b}" for q, b in zip(config["run_quant"], input.builds)),
        step=step("deploy"),
    log:
        "logs/deploy/{variant}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m deploy --variant {wildcards.variant} --race {input.race:q} --metrics {input.metrics:q}"
        " --classes {input.classes:q} {params.builds} --out {output:q} 2> {log:q}"
