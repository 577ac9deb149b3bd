"""Data: the embedded demo dataset, the dataset index, uint8 npz shards and the datalist."""


rule demo_photos:
    output:
        labels="data/demo/val_label.txt",
        classes="data/demo/label.txt",
        images=directory("data/demo/val"),
    params:
        step=step("demo_photos"),
    log:
        "logs/demo_photos.log",
    conda:
        CONDA_ENV
    shell:
        "python -m demo_photos data/demo 2> {log:q}"


rule dataset_index:
    input:
        dataset_index_inputs,
    output:
        index="npz/{dataset}/index.tsv",
        classes="npz/{dataset}/classes.txt",
    params:
        root=lambda w: dataset_root(w.dataset),
        num_classes=NUM_CLASSES,
        step=step("dataset_index"),
    log:
        "logs/dataset_index/{dataset}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m dataset_index {params.root:q} --out {output.index:q} --classes {output.classes:q}"
        " --num-classes {params.num_classes} 2> {log:q}"


rule make_shards:
    input:
        # The images are not listed one by one (450,000 inputs made an ImageNet-scale dry run take minutes):
        # the index changes when files are added, removed or relabelled; see README, rerun policy.
        index="npz/{dataset}/index.tsv",
    output:
        "npz/{dataset}/{geom}/shard-{shard}.npz",
    params:
        root=lambda w: dataset_root(w.dataset),
        geom=lambda w: parse_geom(w.geom),
        shard_size=PREP["shard_size"],
        on_bad_image=PREP["on_bad_image"],
        rows_as=lambda w: shard_storage(w.geom),
        step=step("make_shards"),
    threads: PREP["workers"]
    resources:
        mem_mb=job_mem_mb("make_shards"),
        runtime=job_runtime("make_shards"),
    log:
        "logs/make_shards/{dataset}/{geom}/{shard}.log",
    benchmark:
        "benchmarks/make_shards/{dataset}/{geom}/{shard}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m make_shards --root {params.root:q} --index {input.index:q} --shard {wildcards.shard}"
        " --shard-size {params.shard_size} --size {params.geom[0]} --resize {params.geom[1]}"
        " --interpolation {params.geom[2]} {params.geom[3]} --on-bad-image {params.on_bad_image} --workers {threads}"
        " --storage {params.rows_as} --out {output:q} 2> {log:q}"


rule make_datalist:
    input:
        shard_files,
    output:
        datalist="npz/{dataset}/{geom}/datalist.tsv",
        skipped="npz/{dataset}/{geom}/skipped.tsv",
    params:
        step=step("make_datalist"),
    log:
        "logs/make_datalist/{dataset}/{geom}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m make_datalist --shards {input:q} --out {output.datalist:q}"
        " --skipped {output.skipped:q} 2> {log:q}"
