"""Benchmark: throughput and latency of every build, PyTorch eager measured in the same run -> perf/."""


rule benchmark:
    input:
        unpack(build_files),
    output:
        "perf/{variant}-{quant}.json",
    params:
        layout_tuning="on" if INFER["layout_tuning"] else "off",
        batch_sizes=" ".join(map(str, BENCH["batch_sizes"])),
        iterations=BENCH["iterations"],
        warmup=BENCH["warmup"],
        rounds=BENCH["rounds"],
        bench_threads=BENCH["threads"],
        instances=BENCH["instances"],
        bf16_here=bf16_here,
        step=step("benchmark"),
    threads: exclusive_threads  # locally all cores: nothing else runs while timing
    resources:
        mem_mb=job_mem_mb("benchmark"),
        runtime=job_runtime("benchmark"),
    log:
        "logs/benchmark/{variant}-{quant}.log",
    benchmark:
        "benchmarks/benchmark/{variant}-{quant}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m benchmark --model {input.model:q} --build-json {input.build:q} --out {output:q}"
        " --batch-sizes {params.batch_sizes} --iterations {params.iterations} --warmup {params.warmup}"
        " --rounds {params.rounds} --threads {params.bench_threads} --instances {params.instances}"
        " --layout-tuning {params.layout_tuning} 2> {log:q}"
