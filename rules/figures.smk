# Pictures: the visual comparison per data set (crops of HR, bicubic, teacher and every rebuilt
# model) and the fine-tuning recovery plot, both in results/<run>/ and in the report.
VISUAL = config["visual"]


def visual_crop_args(dataset):
    """--image/--box of `srprune visual` from `visual.crops.<dataset>` (none: chosen crop)."""
    crop = VISUAL["crops"].get(dataset, {})
    args = ["--crop-size", str(VISUAL["crop_size"])]
    if "image" in crop:
        args += ["--image", crop["image"]]
    if "box" in crop:
        args += ["--box", ",".join(str(v) for v in crop["box"])]
    return shlex.join(args)


rule visual:
    input:
        f"{RESULTS}/eval/teacher_{{dataset}}.json",
        f"{RESULTS}/eval/bicubic_{{dataset}}.json",
        expand(f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_rebuilt.pth", method=METHODS, budget=BUDGETS),
        expand(f"{RESULTS}/{{method}}/{{budget}}/eval_rebuilt_{{{{dataset}}}}.json",
               method=METHODS, budget=BUDGETS),
    output:
        report(f"{RESULTS}/visual_{{dataset}}.png", category="Pictures",
               caption="../report/visual.rst", labels={"figure": "visual", "dataset": "{dataset}"}),
    params:
        data=lambda w: data_args(w.dataset),
        crop=lambda w: visual_crop_args(w.dataset),
        tile=model_eval_args(),
        methods=" ".join(METHODS),
        budgets=" ".join(BUDGETS),
        device=EVAL["device"],
    log:
        f"{RESULTS}/logs/visual_{{dataset}}.log",
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} srprune visual --results {RESULTS:q} --arch {ARCH} "
        "--dataset {wildcards.dataset} "
        "{params.data} --scale {SCALE} {params.crop} {params.tile} --methods {params.methods} "
        "--budgets {params.budgets} --device {params.device} --out {output:q} > {log:q} 2>&1"


rule recovery_plot:
    input:
        expand(f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_finetuned_feature_kd.pth",
               method=METHODS, budget=BUDGETS),
    output:
        report(f"{RESULTS}/finetune_recovery.png", category="Plots",
               caption="../report/finetune_recovery.rst"),
    params:
        methods=" ".join(METHODS),
        budgets=" ".join(BUDGETS),
    log:
        f"{RESULTS}/logs/recovery_plot.log",
    shell:
        "srprune plot-recovery --results {RESULTS:q} --methods {params.methods} "
        "--budgets {params.budgets} --out {output:q} > {log:q} 2>&1"
