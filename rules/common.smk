# Helpers shared by the rules: paths and command-line fragments built from the config.
import json
import os
import shlex

from snakemake.exceptions import WorkflowError

RUN = config["run"]
SCALE = config["scale"]
RESULTS = f"results/{RUN}"
ARCH = config["teacher"]["arch"]  # names the artifacts: <arch>_<stage>.pth
STAGES = ["pruned", "compensated", "finetuned_feature_kd", "rebuilt"]  # <arch>_<stage>.pth
DATASETS = config["datasets"]
EVAL = config.get("evaluate", {})
PRUNE = config.get("prune", {})
CALIB = PRUNE.get("calibration", {})
OPTIN = PRUNE.get("optin", {})
COMPENSATION = PRUNE.get("compensation", {})
SCORE_JOBS = PRUNE.get("score_jobs", 1)
METHODS = PRUNE.get("methods", ["optin"])
BUDGETS = [str(b) for b in PRUNE.get("budgets", [0.5])]
LATENCY = config.get("latency", {})
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
    """--arch, and --model-config for hyper-parameters the teacher checkpoint cannot tell."""
    model_config = config["teacher"].get("model_config") or {}
    config_arg = f" --model-config {shlex.quote(json.dumps(model_config))}" if model_config else ""
    return f"--arch {shlex.quote(ARCH)}{config_arg}"


def finetune_settings_arg():
    """The finetune section as one JSON argument; a changed setting reruns fine-tuning."""
    return shlex.quote(json.dumps(FINETUNE, sort_keys=True))


def check_inputs_exist():
    """Stop before building the DAG when the teacher or a data folder of the config is missing."""
    missing = []
    teacher = config["teacher"]["weights_path"]
    if not os.path.isfile(teacher):
        missing.append(f"teacher.weights_path: {teacher}")
    folders = {f"datasets.{name}": spec for name, spec in DATASETS.items()}
    folders["prune.calibration"] = CALIB
    folders.update({f"finetune.data.{k}": v for k, v in FINETUNE.get("data", {}).items()})
    for where, spec in folders.items():
        for key in ("hr", "lr"):
            path = spec.get(key)
            if path and not path.startswith("embedded:") and not os.path.isdir(path):
                missing.append(f"{where}.{key}: {path}")
    if missing:
        raise WorkflowError("missing inputs named in the config (paths are relative to "
                            f"{os.getcwd()}):\n  " + "\n  ".join(missing))


check_inputs_exist()


def model_eval_args():
    """Tiling options of `srprune evaluate` for models, from the config."""
    if not EVAL.get("tile", 0):
        return ""
    return shlex.join(["--tile", str(EVAL["tile"]), "--tile-overlap", str(EVAL.get("tile_overlap", 8))])
