# The final comparison: one CSV/Markdown row per (stage, method, budget, data set), and plots.
# Every number is read from the JSON/artifact files the other rules wrote.
rule compare:
    input:
        expand(f"{RESULTS}/eval/{{who}}_{{dataset}}.json",
               who=["teacher", *EVAL["baselines"]], dataset=DATASETS),
        expand(f"{RESULTS}/{{method}}/{{budget}}/eval_{{stage}}_{{dataset}}.json",
               method=METHODS, budget=BUDGETS, stage=STAGES, dataset=DATASETS),
        expand(f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_pruning_masks.pth",
               method=METHODS, budget=BUDGETS),
        expand(f"{RESULTS}/{{method}}/{{budget}}/sparsity.json", method=METHODS, budget=BUDGETS),
        latency=f"{RESULTS}/latency.json",
    output:
        csv=report(f"{RESULTS}/comparison.csv", category="Comparison",
                   caption="../report/workflow.rst"),
        markdown=f"{RESULTS}/comparison.md",
        kept=report(f"{RESULTS}/kept_units.png", category="Plots",
                    caption="../report/kept_units.rst"),
        plots=report(expand(f"{RESULTS}/psnr_vs_macs_{{dataset}}.png", dataset=DATASETS),
                     category="Plots", caption="../report/psnr_vs_macs.rst"),
    params:
        methods=" ".join(METHODS),
        budgets=" ".join(BUDGETS),
        datasets=" ".join(DATASETS),
    log:
        f"{RESULTS}/logs/compare.log",
    shell:
        "srprune compare --results {RESULTS:q} --arch {ARCH} --out {RESULTS:q} "
        "--datasets {params.datasets} "
        "--methods {params.methods} --budgets {params.budgets} --latency {input.latency:q} "
        "> {log:q} 2>&1"
