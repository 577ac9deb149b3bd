"""Deploy: the fastest build of a variant within the accuracy budget -> deploy/<variant>/ (effzoo classify, effzoo.load)."""


rule deploy:
    input:
        metrics="metrics/{variant}.json",
        classes=f"npz/{DATASET}/classes.txt",
        builds=expand("vacc/{{variant}}-{quant}/build.json", quant=config["run_quant"]),
        models=deploy_model_files,
    output:
        directory("deploy/{variant}"),
    params:
        builds=lambda w, input: " ".join(f"--build {q} {b}" for q, b in zip(config["run_quant"], input.builds)),
        min_agreement=config["deploy"]["min_agreement"],
        max_top1_loss=config["deploy"]["max_top1_loss"],
        speed_tolerance=config["deploy"]["speed_tolerance"],
        step=step("deploy"),
    log:
        "logs/deploy/{variant}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m deploy --variant {wildcards.variant} --metrics {input.metrics:q} --classes {input.classes:q}"
        " --min-agreement {params.min_agreement} --max-top1-loss {params.max_top1_loss}"
        " --speed-tolerance {params.speed_tolerance} {params.builds}"
        " --out {output:q} 2> {log:q}"
