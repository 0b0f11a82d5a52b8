# Mask search: unit scores once per method (split over `prune.score_jobs` jobs, block i going to
# job i % score_jobs, then gathered: the same scores as one job), masks and the zeroed teacher
# per budget.


def calibration_args():
    """Calibration and OPTIN options of `srprune score-units` from the config."""
    args = ["--calib-hr", CALIB.get("hr", "embedded:train"),
            "--filename-tmpl", CALIB.get("filename_tmpl", "{}"),
            "--num-crops", str(CALIB.get("num_crops", 32)),
            "--crop-size", str(CALIB.get("crop_size", 48)),
            "--seed", str(CALIB.get("seed", 0)),
            "--tokens", str(OPTIN.get("tokens", 64)),
            "--lam", str(OPTIN.get("lam", 0.3)),
            "--max-batch", str(OPTIN.get("max_batch", 16)),
            "--scorer", OPTIN.get("scorer", "exact"),
            "--probes", str(OPTIN.get("probes", 8))]
    if "lr" in CALIB:
        args += ["--calib-lr", CALIB["lr"]]
    return shlex.join(args)


rule score_units:
    input:
        teacher=config["teacher"]["weights_path"],
    output:
        f"{RESULTS}/{{method}}/unit_scores.part{{part}}of{SCORE_JOBS}.pth",
    params:
        options=calibration_args(),
        model_config=teacher_config_arg(),
        device=PRUNE.get("device", "cpu"),
    log:
        f"{RESULTS}/logs/score_units_{{method}}_part{{part}}.log",
    threads: 1
    resources:
        gpu=1 if str(PRUNE.get("device", "cpu")).startswith("cuda") else 0,
    shell:
        "OMP_NUM_THREADS={threads} srprune score-units --teacher {input.teacher} "
        "--method {wildcards.method} --part {wildcards.part}/{SCORE_JOBS} {params.options} "
        "{params.model_config} --device {params.device} --out {output} > {log} 2>&1"


rule gather_scores:
    input:
        expand(f"{RESULTS}/{{{{method}}}}/unit_scores.part{{part}}of{SCORE_JOBS}.pth",
               part=range(SCORE_JOBS)),
    output:
        f"{RESULTS}/{{method}}/unit_scores.pth",
    log:
        f"{RESULTS}/logs/gather_scores_{{method}}.log",
    shell:
        "srprune gather-scores {input} --out {output} > {log} 2>&1"


rule search_masks:
    input:
        teacher=config["teacher"]["weights_path"],
        scores=f"{RESULTS}/{{method}}/unit_scores.pth",
    output:
        f"{RESULTS}/{{method}}/{{budget}}/catanet_pruning_masks.pth",
    params:
        selection=PRUNE.get("selection", "optin"),
        min_keep=PRUNE.get("min_keep", 0),
        model_config=teacher_config_arg(),
    log:
        f"{RESULTS}/logs/search_masks_{{method}}_{{budget}}.log",
    shell:
        "srprune search-masks --teacher {input.teacher} --scores {input.scores} "
        "--mac-constraint {wildcards.budget} --selection {params.selection} "
        "--min-keep {params.min_keep} {params.model_config} --out {output} > {log} 2>&1"


rule export_zeroed:
    input:
        teacher=config["teacher"]["weights_path"],
        masks=f"{RESULTS}/{{method}}/{{budget}}/catanet_pruning_masks.pth",
    output:
        f"{RESULTS}/{{method}}/{{budget}}/catanet_pruned.pth",
    params:
        model_config=teacher_config_arg(),
    log:
        f"{RESULTS}/logs/export_zeroed_{{method}}_{{budget}}.log",
    shell:
        "srprune export-zeroed --teacher {input.teacher} --masks {input.masks} "
        "{params.model_config} --out {output} > {log} 2>&1"

