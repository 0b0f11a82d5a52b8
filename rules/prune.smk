# Mask search: unit scores once per method (with `prune.score_jobs` > 1 split over that many
# jobs, block i going to job i % score_jobs, then gathered: the same scores as one job), masks,
# the zeroed teacher and its least-squares compensation per budget. The compensated selection
# compensates every candidate anyway, so search_masks writes the winner's compensated model
# itself and there is no compensate job.


rule score_units:
    input:
        teacher=TEACHER,
        calibration=folders(CALIB),
    output:
        score_output(),
    params:
        part=part_arg,
        options=score_args,
        model_config=teacher_config_arg(),
        device=PRUNE["device"],
    log:
        PATHS.log(f"score_units_{score_job()}"),
    benchmark:
        PATHS.benchmark(f"score_units_{score_job()}")
    threads: 1
    resources:
        gpu=gpus(PRUNE["device"]),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune score-units --teacher {input.teacher:q} "
        "--method {wildcards.method} {params.part} {params.options} "
        "{params.model_config} --device {params.device} --out {output:q} > {log:q} 2>&1"


if SCORE_JOBS > 1:

    localrules:
        gather_scores,

    rule gather_scores:
        input:
            expand(PATHS.score_part("{{method}}", "{part}", SCORE_JOBS), part=range(SCORE_JOBS)),
        output:
            PATHS.scores("{method}"),
        log:
            PATHS.log("gather_scores_{method}"),
        conda:
            CONDA_ENV
        shell:
            "srprune gather-scores {input:q} --out {output:q} > {log:q} 2>&1"


rule search_masks:
    input:
        teacher=TEACHER,
        calibration=folders(CALIB),
        scores=PATHS.scores("{method}"),
    output:
        **search_outputs(),
    params:
        selection=PRUNE["selection"],
        min_keep=PRUNE["min_keep"],
        steps=PRUNE["search_steps"],
        calibration=calibration_args(),
        compensation=compensation_args(),
        compensated_out=compensated_out_arg,
        model_config=teacher_config_arg(),
        device=PRUNE["device"],
    log:
        PATHS.log("search_masks_{method}_{budget}"),
    benchmark:
        PATHS.benchmark("search_masks_{method}_{budget}")
    threads: 1
    resources:
        gpu=gpus(PRUNE["device"]),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune search-masks --teacher {input.teacher:q} "
        "--scores {input.scores:q} --mac-constraint {wildcards.budget} "
        "--selection {params.selection} --min-keep {params.min_keep} "
        "--search-steps {params.steps} {params.calibration} "
        "{params.compensation} {params.model_config} --device {params.device} "
        "--out {output.masks:q} {params.compensated_out} > {log:q} 2>&1"


rule export_zeroed:
    input:
        teacher=TEACHER,
        masks=PATHS.masks("{method}", "{budget}"),
    output:
        PATHS.model("{method}", "{budget}", layout.ZEROED),
    params:
        model_config=teacher_config_arg(),
    log:
        PATHS.log("export_zeroed_{method}_{budget}"),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune export-zeroed --teacher {input.teacher:q} "
        "--masks {input.masks:q} {params.model_config} --out {output:q} > {log:q} 2>&1"


if not SEARCH_COMPENSATES:

    rule compensate:
        input:
            teacher=TEACHER,
            calibration=folders(CALIB),
            model=PATHS.model("{method}", "{budget}", layout.ZEROED),
        output:
            PATHS.model("{method}", "{budget}", layout.COMPENSATED),
        params:
            calibration=calibration_args(),
            options=compensation_args(),
            model_config=teacher_config_arg(),
            device=PRUNE["device"],
        log:
            PATHS.log("compensate_{method}_{budget}"),
        benchmark:
            PATHS.benchmark("compensate_{method}_{budget}")
        threads: 1
        resources:
            gpu=gpus(PRUNE["device"]),
        conda:
            CONDA_ENV
        shell:
            "OMP_NUM_THREADS={threads} srprune compensate --teacher {input.teacher:q} "
            "--model {input.model:q} {params.calibration} {params.options} "
            "{params.model_config} --device {params.device} --out {output:q} > {log:q} 2>&1"
