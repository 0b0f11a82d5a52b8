# Latency, side by side: the teacher and every rebuilt model timed in one process, in
# interleaved rounds on the same input. The rule takes every core of the run, so Snakemake
# schedules nothing beside it, and the command runs with that many threads and records them.
# The zeroed, compensated and fine-tuned files are dense (the teacher's shapes): the comparison
# gives them the teacher's latency instead of timing them. With `export.formats` holding onnx,
# each rebuilt model's .onnx file is timed with ONNX Runtime in the same rounds.
LATENCY_ONNX = "onnx" in EXPORT["formats"]


rule latency:
    input:
        teacher=TEACHER,
        models=every_budget(PATHS.model, stage=layout.REBUILT),
        onnx=every_budget(PATHS.exported, suffix=layout.EXPORT_SUFFIXES["onnx"])
        if LATENCY_ONNX else [],
    output:
        PATHS.latency,
    params:
        models=lambda wildcards, input: latency_model_args(input),
        model_config=teacher_config_arg(),
        size=LATENCY["size"],
        rounds=LATENCY["rounds"],
        warmup=LATENCY["warmup"],
        device=LATENCY["device"],
    log:
        PATHS.log("latency"),
    benchmark:
        PATHS.benchmark("latency")
    threads: lambda wildcards: workflow.cores
    resources:
        gpu=gpus(LATENCY["device"]),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune time-models --teacher {input.teacher:q} "
        "{params.model_config} {params.models} --size {params.size} --rounds {params.rounds} "
        "--warmup {params.warmup} --threads {threads} --device {params.device} "
        "--json {output:q} > {log:q} 2>&1"
