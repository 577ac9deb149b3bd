"""Report: the model table (markdown, CSV) and the accuracy-vs-throughput plot; `snakemake --report`."""


rule summary:
    input:
        expand("metrics/{variant}.json", variant=config["run_variants"]),
    output:
        md=report("reports/summary.md", caption="../report/summary.rst", category="Model table"),
        html=report("reports/summary.html", caption="../report/summary.rst", category="Model table"),
        csv=report("reports/summary.csv", caption="../report/summary_csv.rst", category="Model table"),
        plot=report("reports/accuracy_vs_throughput.png", caption="../report/plot.rst", category="Plots"),
    params:
        min_agreement=config["deploy"]["min_agreement"],
        max_top1_loss=config["deploy"]["max_top1_loss"],
        speed_tolerance=config["deploy"]["speed_tolerance"],
        step=step("summary"),
    log:
        "logs/summary.log",
    conda:
        CONDA_ENV
    shell:
        "python -m summary --metrics {input:q} --md {output.md:q} --html {output.html:q} --csv {output.csv:q}"
        " --plot {output.plot:q}"
        " --min-agreement {params.min_agreement} --max-top1-loss {params.max_top1_loss}"
        " --speed-tolerance {params.speed_tolerance} 2> {log:q}"
