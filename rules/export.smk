# Deployment files of every rebuilt model: ONNX (dynamic sizes) and/or TorchScript (one LR size),
# as `export.formats` lists (empty by default: each export takes about a minute).
FORMAT_OF_SUFFIX = {suffix: fmt for fmt, suffix in layout.EXPORT_SUFFIXES.items()}
EXPORTS = [path for fmt in EXPORT["formats"]
           for path in every_budget(PATHS.exported, suffix=layout.EXPORT_SUFFIXES[fmt])]


rule export:
    input:
        PATHS.model("{method}", "{budget}", layout.REBUILT),
    output:
        PATHS.exported("{method}", "{budget}", "{suffix}"),
    params:
        fmt=lambda wildcards: FORMAT_OF_SUFFIX[wildcards.suffix],
        size=EXPORT["size"],
    log:
        PATHS.log("export_{method}_{budget}_{suffix}"),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune export --format {params.fmt} --size {params.size} "
        "{input:q} {output:q} > {log:q} 2>&1"
