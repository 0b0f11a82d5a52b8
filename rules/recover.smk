# Recovery and compaction: feature-KD fine-tuning (masks fixed) from the compensated model
# (`prune.compensate: true`) or the zeroed one, then the physical rebuild and the inspection of
# every stage's zeros. The fine-tuning work folder (resume state) is the job's own; its log is
# copied out as a declared output for the recovery plot.
FINETUNE_START = layout.COMPENSATED if PRUNE["compensate"] else layout.ZEROED


rule finetune:
    input:
        teacher=TEACHER,
        student=PATHS.model("{method}", "{budget}", FINETUNE_START),
        data=folders(*FINETUNE.get("data", {}).values()),
    output:
        model=PATHS.model("{method}", "{budget}", layout.FINETUNED),
        log=PATHS.finetune_log("{method}", "{budget}"),
    params:
        settings=shlex.quote(json.dumps(FINETUNE, sort_keys=True)),  # a change reruns it
        model_config=teacher_config_arg(),
        workdir=PATHS.finetune_workdir("{method}", "{budget}"),
    log:
        PATHS.log("finetune_{method}_{budget}"),
    benchmark:
        PATHS.benchmark("finetune_{method}_{budget}")
    threads: 1
    resources:
        gpu=gpus(FINETUNE["device"]),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune finetune --teacher {input.teacher:q} "
        "--student {input.student:q} --settings {params.settings} {params.model_config} "
        "--workdir {params.workdir:q} --fresh-on-change --out {output.model:q} > {log:q} 2>&1 "
        "&& cp {params.workdir:q}/log.csv {output.log:q}.tmp && mv {output.log:q}.tmp {output.log:q}"


rule rebuild:
    input:
        PATHS.model("{method}", "{budget}", layout.FINETUNED),
    output:
        PATHS.model("{method}", "{budget}", layout.REBUILT),
    log:
        PATHS.log("rebuild_{method}_{budget}"),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune rebuild --model {input:q} --out {output:q} "
        "> {log:q} 2>&1"


rule inspect:
    input:
        [PATHS.model("{method}", "{budget}", stage) for stage in layout.MODEL_STAGES],
    output:
        PATHS.sparsity("{method}", "{budget}"),
    log:
        PATHS.log("inspect_{method}_{budget}"),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune inspect {input:q} --json {output:q} > {log:q} 2>&1"
