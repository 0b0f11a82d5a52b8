# Helpers shared by the rules: paths and command-line fragments built from the config.
import json
import shlex

RUN = config["run"]
SCALE = config["scale"]
RESULTS = f"results/{RUN}"
STAGES = ["pruned", "finetuned_feature_kd", "rebuilt"]  # catanet_<stage>.pth per method/budget
DATASETS = config["datasets"]
EVAL = config.get("evaluate", {})
PRUNE = config.get("prune", {})
CALIB = PRUNE.get("calibration", {})
OPTIN = PRUNE.get("optin", {})
SCORE_JOBS = PRUNE.get("score_jobs", 1)
FINETUNE = config.get("finetune", {})
FINETUNE_ON_GPU = str(FINETUNE.get("device", "auto")) != "cpu"


def data_args(dataset):
    """--hr/--lr/--filename-tmpl arguments of `srprune evaluate` for one configured data set."""
    spec = DATASETS[dataset]
    args = ["--hr", spec["hr"], "--filename-tmpl", spec.get("filename_tmpl", "{}")]
    if "lr" in spec:
        args += ["--lr", spec["lr"]]
    return shlex.join(args)


def teacher_config_arg():
    """--model-config for hyper-parameters the teacher checkpoint cannot tell."""
    model_config = config["teacher"].get("model_config") or {}
    return f"--model-config {shlex.quote(json.dumps(model_config))}" if model_config else ""


def finetune_settings_arg():
    """The finetune section as one JSON argument; a changed setting reruns fine-tuning."""
    return shlex.quote(json.dumps(FINETUNE, sort_keys=True))
