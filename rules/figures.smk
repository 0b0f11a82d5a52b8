# Pictures: the visual comparison per data set (crops of HR, bicubic, teacher and every rebuilt
# model) and the fine-tuning recovery plot, both in results/<run>/ and in the report.
VISUAL_REFERENCES = [layout.TEACHER, "bicubic"]  # whose saved SR images the figure shows


rule visual:
    input:
        evals=[PATHS.reference_eval(who, "{dataset}") for who in VISUAL_REFERENCES],
        images=[PATHS.reference_images(who, "{dataset}") for who in VISUAL_REFERENCES],
        models=every_budget(PATHS.model, stage=layout.REBUILT),
        rebuilt_evals=every_budget(PATHS.stage_eval, stage=layout.REBUILT, dataset="{dataset}"),
        data=dataset_folders,
    output:
        report(PATHS.visual("{dataset}"), category="Pictures", caption="../report/visual.rst",
               labels={"figure": "visual", "dataset": "{dataset}"}),
    params:
        layout=layout_args(),
        data=lambda w: data_args(w.dataset),
        scale=config["scale"],
        crop=lambda w: visual_crop_args(w.dataset),
        tile=model_eval_args(),
        device=EVAL["device"],
    log:
        PATHS.log("visual_{dataset}"),
    threads: 1
    resources:
        gpu=gpus(EVAL["device"]),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} srprune visual {params.layout} --dataset {wildcards.dataset} "
        "{params.data} --scale {params.scale} {params.crop} {params.tile} "
        "--device {params.device} --out {output:q} > {log:q} 2>&1"


rule recovery_plot:
    input:
        every_budget(PATHS.finetune_log),
    output:
        report(PATHS.recovery, category="Plots", caption="../report/finetune_recovery.rst"),
    params:
        layout=layout_args(),
    log:
        PATHS.log("recovery_plot"),
    conda:
        CONDA_ENV
    shell:
        "srprune plot-recovery {params.layout} --out {output:q} > {log:q} 2>&1"
