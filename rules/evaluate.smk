# Evaluation: PSNR/SSIM (Y channel), params and MACs, as JSON under results/<run>/eval/; the
# teacher's and bicubic's SR outputs as PNG under results/<run>/images/ (for the visual figure).


rule evaluate_teacher:
    input:
        model=config["teacher"]["weights_path"],
    output:
        json=f"{RESULTS}/eval/teacher_{{dataset}}.json",
        images=directory(f"{RESULTS}/images/teacher_{{dataset}}"),
    params:
        data=lambda w: data_args(w.dataset),
        model_config=teacher_config_arg(),
        device=EVAL["device"],
        options=model_eval_args(),
    log:
        f"{RESULTS}/logs/evaluate_teacher_{{dataset}}.log",
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} srprune evaluate --model {input.model:q} {params.data} "
        "--scale {SCALE} --device {params.device} {params.model_config} {params.options} "
        "--save-images {output.images:q} --image-suffix teacher --json {output.json:q} "
        "> {log:q} 2>&1"


rule evaluate_baseline:
    output:
        json=f"{RESULTS}/eval/{{baseline}}_{{dataset}}.json",
        images=directory(f"{RESULTS}/images/{{baseline}}_{{dataset}}"),
    wildcard_constraints:
        baseline="bicubic",
    params:
        data=lambda w: data_args(w.dataset),
    log:
        f"{RESULTS}/logs/evaluate_{{baseline}}_{{dataset}}.log",
    shell:
        "srprune evaluate --model {wildcards.baseline} {params.data} --scale {SCALE} "
        "--save-images {output.images:q} --json {output.json:q} > {log:q} 2>&1"


rule evaluate_stage:
    input:
        model=f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_{{stage}}.pth",
    output:
        f"{RESULTS}/{{method}}/{{budget}}/eval_{{stage}}_{{dataset}}.json",
    params:
        data=lambda w: data_args(w.dataset),
        device=EVAL["device"],
        options=model_eval_args(),
    log:
        f"{RESULTS}/logs/evaluate_{{stage}}_{{method}}_{{budget}}_{{dataset}}.log",
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} srprune evaluate --model {input.model:q} {params.data} "
        "--scale {SCALE} --device {params.device} {params.options} --json {output:q} > {log:q} 2>&1"
