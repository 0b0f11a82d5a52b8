# The final comparison: one CSV/Markdown row per (stage, method, budget, data set), and plots.
# Every number is read from the JSON/artifact files the other rules wrote.


rule compare:
    input:
        [PATHS.reference_eval(who, dataset) for who in [layout.TEACHER, *EVAL["baselines"]]
         for dataset in DATASETS],
        [path for stage in layout.MODEL_STAGES for dataset in DATASETS
         for path in every_budget(PATHS.stage_eval, stage=stage, dataset=dataset)],
        every_budget(PATHS.masks),
        every_budget(PATHS.sparsity),
        latency=PATHS.latency,
    output:
        csv=report(PATHS.comparison_csv, category="Comparison",
                   caption="../report/workflow.rst"),
        markdown=PATHS.comparison_md,
        kept=report(PATHS.kept_units, category="Plots", caption="../report/kept_units.rst"),
        plots=report([PATHS.psnr_vs_macs(dataset) for dataset in DATASETS],
                     category="Plots", caption="../report/psnr_vs_macs.rst"),
    params:
        layout=layout_args(),
        out=lambda wildcards, output: os.path.dirname(output.csv),
        datasets=shlex.join(DATASETS),
    log:
        PATHS.log("compare"),
    conda:
        CONDA_ENV
    shell:
        "srprune compare {params.layout} --out {params.out:q} --datasets {params.datasets} "
        "--latency {input.latency:q} > {log:q} 2>&1"
