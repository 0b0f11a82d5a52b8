# Evaluation: PSNR/SSIM (Y channel), params and MACs, as JSON under results/<run>/eval/.


rule evaluate_teacher:
    input:
        model=config["teacher"]["weights_path"],
    output:
        f"{RESULTS}/eval/teacher_{{dataset}}.json",
    params:
        data=lambda w: data_args(w.dataset),
        model_config=teacher_config_arg(),
        device=EVAL.get("device", "cpu"),
        options=model_eval_args(),
    log:
        f"{RESULTS}/logs/evaluate_teacher_{{dataset}}.log",
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} srprune evaluate --model {input.model:q} {params.data} "
        "--scale {SCALE} --device {params.device} {params.model_config} {params.options} "
        "--json {output:q} > {log:q} 2>&1"


rule evaluate_baseline:
    output:
        f"{RESULTS}/eval/{{baseline}}_{{dataset}}.json",
    wildcard_constraints:
        baseline="bicubic",
    params:
        data=lambda w: data_args(w.dataset),
    log:
        f"{RESULTS}/logs/evaluate_{{baseline}}_{{dataset}}.log",
    shell:
        "srprune evaluate --model {wildcards.baseline} {params.data} --scale {SCALE} "
        "--json {output:q} > {log:q} 2>&1"


rule evaluate_stage:
    input:
        model=f"{RESULTS}/{{method}}/{{budget}}/catanet_{{stage}}.pth",
    output:
        f"{RESULTS}/{{method}}/{{budget}}/eval_{{stage}}_{{dataset}}.json",
    params:
        data=lambda w: data_args(w.dataset),
        device=EVAL.get("device", "cpu"),
        options=model_eval_args(),
    log:
        f"{RESULTS}/logs/evaluate_{{stage}}_{{method}}_{{budget}}_{{dataset}}.log",
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} srprune evaluate --model {input.model:q} {params.data} "
        "--scale {SCALE} --device {params.device} {params.options} --json {output:q} > {log:q} 2>&1"
