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
# Every default lives in config/schema.yaml: validating the config fills them in, so the rules
# read each setting as it is (the CLI's own defaults are the same; tests/test_defaults.py).
EVAL = config["evaluate"]
PRUNE = config["prune"]
CALIB = PRUNE["calibration"]
OPTIN = PRUNE["optin"]
COMPENSATION = PRUNE["compensation"]
SCORE_JOBS = PRUNE["score_jobs"]
METHODS = PRUNE["methods"]
BUDGETS = [str(b) for b in PRUNE["budgets"]]
LATENCY = config["latency"]
FINETUNE = config["finetune"]
FINETUNE_ON_GPU = str(FINETUNE["device"]) != "cpu"


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
        source = config["teacher"].get("source")
        missing.append(f"teacher.weights_path: {teacher}" + (f" (get it from {source})" if source else ""))
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
    if not EVAL["tile"]:
        return ""
    return shlex.join(["--tile", str(EVAL["tile"]), "--tile-overlap", str(EVAL["tile_overlap"])])
