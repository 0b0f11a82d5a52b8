# Helpers of the rules: the run's paths (srprune/layout.py as `layout`) and command-line fragments
# built from the config. Every config value a shell command uses reaches it through `params:`,
# so changing it reruns exactly the jobs that use it.
import importlib.util
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError


def load_layout():
    """srprune/layout.py by path: building the DAG needs neither torch nor an installed srprune."""
    path = f"{workflow.basedir}/workflow/srprune/layout.py"
    spec = importlib.util.spec_from_file_location("srprune_layout", path)
    loaded = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


layout = load_layout()


TEACHER = config["teacher"]["weights_path"]
PATHS = layout.RunPaths(f"results/{config['run']}", config["teacher"]["arch"])
DATASETS = config["datasets"]
# Every default lives in config/schema.yaml: validating the config fills them in, so the rules
# read each setting as it is (the CLI's own defaults are the same; tests/test_defaults.py).
EVAL = config["evaluate"]
PRUNE = config["prune"]
CALIB = PRUNE["calibration"]
OPTIN = PRUNE["optin"]
COMPENSATION = PRUNE["compensation"]
METHODS = PRUNE["methods"]
BUDGETS = [str(b) for b in PRUNE["budgets"]]
SCORE_JOBS = PRUNE["score_jobs"]
SEARCH_COMPENSATES = PRUNE["selection"] == "compensated"  # search_masks writes the compensated model
LATENCY = config["latency"]
FINETUNE = config["finetune"]
EXPORT = config["export"]
VISUAL = config["visual"]
CONDA_ENV = "../envs/srprune.yaml"  # relative to rules/, where every rule with a command is


def gpus(device):
    """GPUs a job asks for (resource `gpu`; the SLURM profile sends such jobs to its GPU
    partition): none on `cpu`, one on `cuda`, `cuda:N` and `auto` (which takes a GPU when the
    job has one)."""
    return 0 if str(device) == "cpu" else 1


def data_args(dataset):
    """--hr/--lr/--filename-tmpl arguments of `srprune evaluate` for one configured data set."""
    spec = DATASETS[dataset]
    args = ["--hr", spec["hr"], "--filename-tmpl", spec.get("filename_tmpl", "{}")]
    if "lr" in spec:
        args += ["--lr", spec["lr"]]
    return shlex.join(args)


def folders(*specs):
    """The HR and LR folders (not embedded:) of data-set specs: inputs of the jobs reading them."""
    return [spec[key] for spec in specs for key in ("hr", "lr")
            if not spec.get(key, "embedded:").startswith("embedded:")]


def dataset_folders(wildcards):
    return folders(DATASETS[wildcards.dataset])


def teacher_config_arg():
    """--arch, and --model-config for hyper-parameters the teacher checkpoint cannot tell."""
    model_config = config["teacher"].get("model_config") or {}
    config_arg = f" --model-config {shlex.quote(json.dumps(model_config))}" if model_config else ""
    return f"--arch {shlex.quote(PATHS.arch)}{config_arg}"


def layout_args():
    """--results, --arch, --methods and --budgets: the part of the run a final rule reads."""
    return shlex.join(["--results", PATHS.root, "--arch", PATHS.arch, "--methods", *METHODS,
                       "--budgets", *BUDGETS])


def every_budget(path, **wildcards):
    """`path(method, budget, ...)` for every configured method and budget."""
    return [path(m, b, **wildcards) for m in METHODS for b in BUDGETS]


def check_inputs_exist():
    """Stop before building the DAG when the teacher or a data folder of the config is missing."""
    missing = []
    if not os.path.isfile(TEACHER):
        source = config["teacher"].get("source")
        missing.append(f"teacher.weights_path: {TEACHER}" + (f" (get it from {source})" if source else ""))
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


# --------------------------------------------------------------------------- rules/prune.smk
def calibration_args(crops=CALIB):
    """Calibration-crop options of `srprune search-masks` and `compensate` (`score-units`: the
    number and size of `crops` from `prune.optin`)."""
    args = ["--calib-hr", CALIB["hr"], "--filename-tmpl", CALIB["filename_tmpl"],
            "--num-crops", str(crops["num_crops"]), "--crop-size", str(crops["crop_size"]),
            "--seed", str(CALIB["seed"])]
    if "lr" in CALIB:
        args += ["--calib-lr", CALIB["lr"]]
    return shlex.join(args)


# Methods that score on their own crops, `prune.optin` (their Importance.scoring_crops is true;
# tests/pruning/test_obs.py checks this against the registry): the others score on
# `prune.calibration`, with the compensation's settings (obs predicts that refit).
OWN_CROPS_METHODS = ("optin",)


def score_args(wildcards):
    """Calibration, unit kinds, OPTIN and compensation options of `srprune score-units`."""
    crops = OPTIN if wildcards.method in OWN_CROPS_METHODS else CALIB
    options = option_args(OPTIN, ("tokens", "lam", "max_batch", "scorer", "probes"))
    return " ".join([calibration_args(crops), shlex.join(["--units", ",".join(PRUNE["units"]),
                                                          *options]), compensation_args()])


def option_args(section, keys):
    """``--key value`` of settings ``keys`` of a config section (``max_batch``: ``--max-batch``)."""
    return [part for key in keys for part in (f"--{key.replace('_', '-')}", str(section[key]))]


def compensation_args():
    """Options of `srprune compensate` (and of the compensated selection of `search-masks`) from
    `prune.compensation`."""
    return shlex.join(option_args(COMPENSATION, ("ridge", "target", "batch_size")))


def score_job():
    """What names one scoring job: its method, and its part when scoring is split."""
    return "{method}" if SCORE_JOBS == 1 else "{method}_part{part}"


def score_output():
    """One job's scores: the method's scores, or a part of them (deleted once gathered)."""
    if SCORE_JOBS == 1:
        return PATHS.scores("{method}")
    return temp(PATHS.score_part("{method}", "{part}", SCORE_JOBS))


def part_arg(wildcards):
    return "" if SCORE_JOBS == 1 else f"--part {wildcards.part}/{SCORE_JOBS}"


def search_outputs():
    """The masks, and with the compensated selection the winner's compensated model."""
    masks = {"masks": PATHS.masks("{method}", "{budget}")}
    if SEARCH_COMPENSATES:
        masks["compensated"] = PATHS.model("{method}", "{budget}", layout.COMPENSATED)
    return masks


def compensated_out_arg(wildcards, output):
    return shlex.join(["--compensated-out", output.compensated]) if SEARCH_COMPENSATES else ""


# --------------------------------------------------------------------------- rules/latency.smk
def latency_model_args(input):
    """--model <label>=<rebuilt checkpoint> for every budget (the labels compare reads), and
    --onnx <label>=<its .onnx file> when ONNX export is on."""
    labels = [layout.latency_label(m, b) for m in METHODS for b in BUDGETS]
    pairs = [("--model", label, path) for label, path in zip(labels, input.models)]
    pairs += [("--onnx", label, path) for label, path in zip(labels, input.onnx)]
    return shlex.join(word for option, label, path in pairs for word in (option, f"{label}={path}"))


# --------------------------------------------------------------------------- rules/figures.smk
def visual_crop_args(dataset):
    """--image/--box of `srprune visual` from `visual.crops.<dataset>` (none: chosen crop)."""
    crop = VISUAL["crops"].get(dataset, {})
    args = ["--crop-size", str(VISUAL["crop_size"])]
    if "image" in crop:
        args += ["--image", crop["image"]]
    if "box" in crop:
        args += ["--box", ",".join(str(v) for v in crop["box"])]
    return shlex.join(args)
