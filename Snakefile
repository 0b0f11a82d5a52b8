# srprune: one-shot structured pruning of SR transformers, as one Snakemake DAG.
# Stages so far: teacher evaluation (and the bicubic baseline) on every configured data set;
# unit scores per method; per (method, budget) the masks, the zeroed teacher, the fine-tuned and
# the rebuilt model, each evaluated on every data set.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/evaluate.smk"
include: "rules/prune.smk"
include: "rules/recover.smk"


wildcard_constraints:
    method="optin|magnitude|random",
    budget=r"(0?\.[0-9]+|1(\.0+)?)",
    part="[0-9]+",
    dataset="[A-Za-z0-9_-]+",
    stage="|".join(STAGES),


rule all:
    input:
        expand(f"{RESULTS}/eval/teacher_{{dataset}}.json", dataset=DATASETS),
        expand(f"{RESULTS}/eval/{{baseline}}_{{dataset}}.json", dataset=DATASETS,
               baseline=EVAL.get("baselines", ["bicubic"])),
        expand(f"{RESULTS}/{{method}}/{{budget}}/eval_{{stage}}_{{dataset}}.json",
               method=PRUNE.get("methods", ["optin"]), budget=PRUNE.get("budgets", [0.5]),
               stage=STAGES, dataset=DATASETS),
        expand(f"{RESULTS}/{{method}}/{{budget}}/sparsity.json",
               method=PRUNE.get("methods", ["optin"]), budget=PRUNE.get("budgets", [0.5])),
    default_target: True


onsuccess:
    print(f"\nsrprune: results are in {RESULTS}/ (evaluation JSON under {RESULTS}/eval/)")
