# srprune: one-shot structured pruning of SR transformers, as one Snakemake DAG.
# Stages so far: teacher evaluation (and the bicubic baseline) on every configured data set;
# unit scores per method; per (method, budget) the masks, the zeroed teacher, the fine-tuned and
# the rebuilt model, each evaluated on every data set; the teacher and every rebuilt model timed
# side by side; the comparison and its pictures.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/evaluate.smk"
include: "rules/prune.smk"
include: "rules/recover.smk"
include: "rules/latency.smk"
include: "rules/compare.smk"
include: "rules/export.smk"
include: "rules/figures.smk"


wildcard_constraints:
    method="|".join(METHODS),
    budget=r"(0?\.[0-9]+|1(\.0+)?)",
    part="[0-9]+",
    dataset="[A-Za-z0-9_-]+",
    stage="|".join(STAGES),
    suffix="onnx|ts",


rule all:
    input:
        f"{RESULTS}/comparison.csv",
        EXPORTS,
        expand(f"{RESULTS}/visual_{{dataset}}.png", dataset=DATASETS),
        f"{RESULTS}/finetune_recovery.png",
    default_target: True


onsuccess:
    print(f"\nsrprune: comparison in {RESULTS}/comparison.csv and {RESULTS}/comparison.md, plots "
          f"{RESULTS}/psnr_vs_macs_<dataset>.png and {RESULTS}/kept_units.png, pictures "
          f"{RESULTS}/visual_<dataset>.png and {RESULTS}/finetune_recovery.png; side-by-side "
          f"latency in {RESULTS}/latency.json; every artifact under {RESULTS}/<method>/<budget>/; "
          f"`snakemake --report report.html` makes the HTML report")
