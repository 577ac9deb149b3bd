"""Report: the model table (markdown, CSV) and the accuracy-vs-throughput plot; `snakemake --report`."""


rule summary:
    input:
        metrics=expand("metrics/{variant}.json", variant=config["run_variants"]),
        races=expand("race/{variant}.json", variant=config["run_variants"] if BENCH["enabled"] else []),
    output:
        md=report("reports/summary.md", caption="../report/summary.rst", category="Model table"),
        html=report("reports/summary.html", caption="../report/summary.rst", category="Model table"),
        csv=report("reports/summary.csv", caption="../report/summary_csv.rst", category="Model table"),
        plot=report("reports/accuracy_vs_throughput.png", caption="../report/plot.rst", category="Plots"),
    params:
        races=lambda w, input: f"--races {' '.join(input.races)}" if input.races else "",
        step=step("summary"),
    log:
        "logs/summary.log",
    conda:
        CONDA_ENV
    shell:
        "python -m summary --metrics {input.metrics:q} {params.races} --md {output.md:q} --html {output.html:q}"
        " --csv {output.csv:q} --plot {output.plot:q} 2> {log:q}"
