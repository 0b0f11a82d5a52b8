# Recovery and compaction: feature-KD fine-tuning (masks fixed) from the compensated model
# (`prune.compensate: true`) or the zeroed one, then the physical rebuild.
FINETUNE_START = "compensated" if PRUNE["compensate"] else "pruned"
FINETUNE_WORKDIR = "finetune_work"   # log.csv there feeds the recovery plot (rules/figures.smk)


rule finetune:
    input:
        teacher=config["teacher"]["weights_path"],
        student=f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_{FINETUNE_START}.pth",
    output:
        f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_finetuned_feature_kd.pth",
    params:
        settings=finetune_settings_arg(),
        model_config=teacher_config_arg(),
        workdir=f"{RESULTS}/{{method}}/{{budget}}/{FINETUNE_WORKDIR}",
    log:
        f"{RESULTS}/logs/finetune_{{method}}_{{budget}}.log",
    threads: 1
    resources:
        gpu=1 if FINETUNE_ON_GPU else 0,
    shell:
        "OMP_NUM_THREADS={threads} srprune finetune --teacher {input.teacher:q} "
        "--student {input.student:q} --settings {params.settings} {params.model_config} "
        "--workdir {params.workdir:q} --fresh-on-change --out {output:q} > {log:q} 2>&1"


rule rebuild:
    input:
        f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_finetuned_feature_kd.pth",
    output:
        f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_rebuilt.pth",
    log:
        f"{RESULTS}/logs/rebuild_{{method}}_{{budget}}.log",
    shell:
        "srprune rebuild --model {input:q} --out {output:q} > {log:q} 2>&1"


rule inspect:
    input:
        expand(f"{RESULTS}/{{{{method}}}}/{{{{budget}}}}/{ARCH}_{{stage}}.pth", stage=STAGES),
    output:
        f"{RESULTS}/{{method}}/{{budget}}/sparsity.json",
    log:
        f"{RESULTS}/logs/inspect_{{method}}_{{budget}}.log",
    shell:
        "srprune inspect {input:q} --json {output:q} > {log:q} 2>&1"
