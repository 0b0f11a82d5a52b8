# Evaluation: PSNR/SSIM (Y channel), params and MACs, as JSON under results/<run>/eval/; the
# teacher's and bicubic's SR outputs as PNG under results/<run>/images/ (for the visual figure).


rule evaluate_teacher:
    input:
        model=TEACHER,
        data=dataset_folders,
    output:
        json=PATHS.reference_eval(layout.TEACHER, "{dataset}"),
        images=directory(PATHS.reference_images(layout.TEACHER, "{dataset}")),
    params:
        data=lambda w: data_args(w.dataset),
        scale=config["scale"],
        model_config=teacher_config_arg(),
        device=EVAL["device"],
        options=model_eval_args(),
    log:
        PATHS.log("evaluate_teacher_{dataset}"),
    threads: 1
    resources:
        gpu=gpus(EVAL["device"]),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune evaluate --model {input.model:q} {params.data} "
        "--scale {params.scale} --device {params.device} {params.model_config} {params.options} "
        "--save-images {output.images:q} --image-suffix teacher --json {output.json:q} "
        "> {log:q} 2>&1"


rule evaluate_baseline:
    input:
        data=dataset_folders,
    output:
        json=PATHS.reference_eval("{baseline}", "{dataset}"),
        images=directory(PATHS.reference_images("{baseline}", "{dataset}")),
    wildcard_constraints:
        baseline="|".join(EVAL["baselines"]),
    params:
        data=lambda w: data_args(w.dataset),
        scale=config["scale"],
    log:
        PATHS.log("evaluate_{baseline}_{dataset}"),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune evaluate --model {wildcards.baseline} {params.data} "
        "--scale {params.scale} --save-images {output.images:q} --json {output.json:q} "
        "> {log:q} 2>&1"


rule evaluate_stage:
    input:
        model=PATHS.model("{method}", "{budget}", "{stage}"),
        data=dataset_folders,
    output:
        PATHS.stage_eval("{method}", "{budget}", "{stage}", "{dataset}"),
    params:
        data=lambda w: data_args(w.dataset),
        scale=config["scale"],
        device=EVAL["device"],
        options=model_eval_args(),
    log:
        PATHS.log("evaluate_{stage}_{method}_{budget}_{dataset}"),
    threads: 1
    resources:
        gpu=gpus(EVAL["device"]),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune evaluate --model {input.model:q} {params.data} "
        "--scale {params.scale} --device {params.device} {params.options} --json {output:q} "
        "> {log:q} 2>&1"
