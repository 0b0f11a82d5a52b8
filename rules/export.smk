# Deployment files of every rebuilt model: ONNX (dynamic sizes) and/or TorchScript (one LR size),
# as `export.formats` lists (empty by default: each export takes about a minute).
EXPORT = config["export"]
EXPORT_SUFFIXES = {"onnx": "onnx", "torchscript": "ts"}
EXPORTS = [
    f"{RESULTS}/{method}/{budget}/{ARCH}_rebuilt.{EXPORT_SUFFIXES[fmt]}"
    for fmt in EXPORT["formats"]
    for method in METHODS
    for budget in BUDGETS
]


rule export:
    input:
        f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_rebuilt.pth",
    output:
        f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_rebuilt.{{suffix}}",
    params:
        fmt=lambda wildcards: {v: k for k, v in EXPORT_SUFFIXES.items()}[wildcards.suffix],
        size=EXPORT["size"],
    log:
        f"{RESULTS}/logs/export_{{method}}_{{budget}}_{{suffix}}.log",
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} srprune export --format {params.fmt} --size {params.size} "
        "{input:q} {output:q} > {log:q} 2>&1"
