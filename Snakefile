# srprune: one-shot structured pruning of SR transformers, as one Snakemake DAG.
# Stages: teacher evaluation (and the bicubic baseline) on every configured data set; unit
# scores per method; per (method, budget) the masks, the zeroed teacher, its compensation, the
# fine-tuned and the rebuilt model, each evaluated on every data set; the teacher and every
# rebuilt model timed side by side; the comparison and its pictures.
from snakemake.utils import min_version, validate

min_version("9.0")


# A config given with --configfile is the whole config: the demo's (its teacher, its data sets)
# never joins it; what it leaves out takes the schema's defaults or is an error naming the key.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/evaluate.smk"
include: "rules/prune.smk"
include: "rules/recover.smk"
include: "rules/export.smk"
include: "rules/latency.smk"
include: "rules/compare.smk"
include: "rules/figures.smk"


wildcard_constraints:
    method="|".join(METHODS),
    budget=r"(0?\.[0-9]+|1(\.0+)?)",
    part="[0-9]+",
    dataset="[A-Za-z0-9_-]+",
    stage="|".join(layout.MODEL_STAGES),
    suffix="|".join(layout.EXPORT_SUFFIXES.values()),


# Rules that only join or draw files run in the Snakemake process itself, never as cluster jobs.
localrules:
    all,
    compare,
    recovery_plot,


rule all:
    input:
        PATHS.comparison_csv,
        EXPORTS,
        [PATHS.visual(dataset) for dataset in DATASETS],
        PATHS.recovery,
    default_target: True


onsuccess:
    print(f"\nsrprune: comparison in {PATHS.comparison_csv} and {PATHS.comparison_md}, plots "
          f"{PATHS.psnr_vs_macs('<dataset>')} and {PATHS.kept_units}, pictures "
          f"{PATHS.visual('<dataset>')} and {PATHS.recovery}; side-by-side latency in "
          f"{PATHS.latency}; every artifact under {PATHS.budget_dir('<method>', '<budget>')}/; "
          f"stage times in {PATHS.benchmark('<job>')}; "
          f"`snakemake --report report.html` makes the HTML report")
