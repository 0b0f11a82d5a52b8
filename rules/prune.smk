# Mask search: unit scores once per method (split over `prune.score_jobs` jobs, block i going to
# job i % score_jobs, then gathered: the same scores as one job), masks, the zeroed teacher and
# its least-squares compensation per budget.


def calibration_args(crops=CALIB):
    """Calibration-crop options of `srprune search-masks` and `compensate` (`score-units`: the
    number and size of `crops` from `prune.optin`)."""
    args = ["--calib-hr", CALIB["hr"], "--filename-tmpl", CALIB["filename_tmpl"],
            "--num-crops", str(crops["num_crops"]), "--crop-size", str(crops["crop_size"]),
            "--seed", str(CALIB["seed"])]
    if "lr" in CALIB:
        args += ["--calib-lr", CALIB["lr"]]
    return shlex.join(args)


def optin_args():
    """Unit kinds and OPTIN options of `srprune score-units`."""
    options = option_args(OPTIN, ("tokens", "lam", "max_batch", "scorer", "probes"))
    return shlex.join(["--units", ",".join(PRUNE["units"]), *options])


def option_args(section, keys):
    """``--key value`` of settings ``keys`` of a config section (``max_batch``: ``--max-batch``)."""
    return [part for key in keys for part in (f"--{key.replace('_', '-')}", str(section[key]))]


def compensation_args():
    """Options of `srprune compensate` (and of the compensated selection of `search-masks`) from
    `prune.compensation`."""
    return shlex.join(option_args(COMPENSATION, ("ridge", "target", "batch_size")))


rule score_units:
    input:
        teacher=config["teacher"]["weights_path"],
    output:
        f"{RESULTS}/{{method}}/unit_scores.part{{part}}of{SCORE_JOBS}.pth",
    params:
        options=f"{calibration_args(OPTIN)} {optin_args()}",
        model_config=teacher_config_arg(),
        device=PRUNE["device"],
    log:
        f"{RESULTS}/logs/score_units_{{method}}_part{{part}}.log",
    threads: 1
    resources:
        gpu=1 if str(PRUNE["device"]).startswith("cuda") else 0,
    shell:
        "OMP_NUM_THREADS={threads} srprune score-units --teacher {input.teacher:q} "
        "--method {wildcards.method} --part {wildcards.part}/{SCORE_JOBS} {params.options} "
        "{params.model_config} --device {params.device} --out {output:q} > {log:q} 2>&1"


rule gather_scores:
    input:
        expand(f"{RESULTS}/{{{{method}}}}/unit_scores.part{{part}}of{SCORE_JOBS}.pth",
               part=range(SCORE_JOBS)),
    output:
        f"{RESULTS}/{{method}}/unit_scores.pth",
    log:
        f"{RESULTS}/logs/gather_scores_{{method}}.log",
    shell:
        "srprune gather-scores {input:q} --out {output:q} > {log:q} 2>&1"


rule search_masks:
    input:
        teacher=config["teacher"]["weights_path"],
        scores=f"{RESULTS}/{{method}}/unit_scores.pth",
    output:
        f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_pruning_masks.pth",
    params:
        selection=PRUNE["selection"],
        min_keep=PRUNE["min_keep"],
        calibration=calibration_args(),
        compensation=compensation_args(),
        model_config=teacher_config_arg(),
        device=PRUNE["device"],
    log:
        f"{RESULTS}/logs/search_masks_{{method}}_{{budget}}.log",
    threads: 1
    resources:
        gpu=1 if str(PRUNE["device"]).startswith("cuda") else 0,
    shell:
        "OMP_NUM_THREADS={threads} srprune search-masks --teacher {input.teacher:q} "
        "--scores {input.scores:q} --mac-constraint {wildcards.budget} "
        "--selection {params.selection} --min-keep {params.min_keep} {params.calibration} "
        "{params.compensation} "
        "{params.model_config} --device {params.device} --out {output:q} > {log:q} 2>&1"


rule export_zeroed:
    input:
        teacher=config["teacher"]["weights_path"],
        masks=f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_pruning_masks.pth",
    output:
        f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_pruned.pth",
    params:
        model_config=teacher_config_arg(),
    log:
        f"{RESULTS}/logs/export_zeroed_{{method}}_{{budget}}.log",
    shell:
        "srprune export-zeroed --teacher {input.teacher:q} --masks {input.masks:q} "
        "{params.model_config} --out {output:q} > {log:q} 2>&1"



rule compensate:
    input:
        teacher=config["teacher"]["weights_path"],
        model=f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_pruned.pth",
    output:
        f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_compensated.pth",
    params:
        calibration=calibration_args(),
        options=compensation_args(),
        model_config=teacher_config_arg(),
        device=PRUNE["device"],
    log:
        f"{RESULTS}/logs/compensate_{{method}}_{{budget}}.log",
    threads: 1
    resources:
        gpu=1 if str(PRUNE["device"]).startswith("cuda") else 0,
    shell:
        "OMP_NUM_THREADS={threads} srprune compensate --teacher {input.teacher:q} "
        "--model {input.model:q} {params.calibration} {params.options} {params.model_config} "
        "--device {params.device} --out {output:q} > {log:q} 2>&1"
