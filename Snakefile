# srprune: one-shot structured pruning of SR transformers, as one Snakemake DAG.
# Stages so far: teacher evaluation (and the bicubic baseline) on every configured data set.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/evaluate.smk"


rule all:
    input:
        expand(f"{RESULTS}/eval/teacher_{{dataset}}.json", dataset=DATASETS),
        expand(f"{RESULTS}/eval/{{baseline}}_{{dataset}}.json", dataset=DATASETS,
               baseline=EVAL.get("baselines", ["bicubic"])),
    default_target: True


onsuccess:
    print(f"\nsrprune: results are in {RESULTS}/ (evaluation JSON under {RESULTS}/eval/)")
