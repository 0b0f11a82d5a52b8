"""The Snakemake workflow: config validation, dry run from the repository, a real tiny run."""
from __future__ import annotations

import csv
import functools
import json
import re
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import srprune
from srprune.models import ARCHS
from workflow_run import (ROOT, copy_workflow, default_config, dry_run, jobs_of, resources_of,
                          snakemake, tiny_config, tiny_swinir_teacher, tiny_teacher, write_config)

DEMO_TEACHER = "weights/demo_catanet_x2.pth"
MODEL_STAGES = ("zeroed", "compensated", "finetuned", "rebuilt")


@pytest.fixture()
def workflow_copy(tmp_path):
    """The workflow files (not results) copied into a scratch folder."""
    return copy_workflow(tmp_path)


def test_dry_run_of_the_default_config():
    jobs = jobs_of(dry_run("--forceall", "--cores", "2"))
    assert set(jobs) == {"evaluate_teacher", "evaluate_baseline", "score_units", "search_masks",
                         "export_zeroed", "finetune", "rebuild", "evaluate_stage", "inspect",
                         "latency", "compare", "visual", "recovery_plot", "all"}
    # one scoring job per method writes the scores itself; the compensated selection's
    # search_masks writes the compensated model (no compensate job)
    assert all("unit_scores.pth" in b and "part" not in b for b in jobs["score_units"])
    assert all("catanet_compensated.pth" in b for b in jobs["search_masks"])


def test_split_scoring_and_the_compensate_job(tmp_path):
    """score_jobs 2: two parts per method, gathered by one job; with another
    selection than compensated, the compensate job compensates the zeroed export."""
    config = default_config()
    config["prune"].update(score_jobs=2, selection="measured")
    plan = dry_run("-p", "--forceall", "--cores", "2", "--configfile",
                   str(write_config(tmp_path, config, "split.yaml")))
    jobs = jobs_of(plan)
    methods, budgets = len(config["prune"]["methods"]), len(config["prune"]["budgets"])
    assert len(jobs["score_units"]) == 2 * methods and len(jobs["gather_scores"]) == methods
    assert all("--part" in b for b in jobs["score_units"])
    assert len(jobs["compensate"]) == methods * budgets
    assert not any("--compensated-out" in b for b in jobs["search_masks"])


@pytest.mark.parametrize("changes", [{}, {"score_jobs": 3, "selection": "knapsack"}],
                         ids=["default", "split-scores-and-compensate"])
def test_lint_is_clean(tmp_path, changes):
    config = default_config()
    config["prune"].update(changes)
    result = snakemake("--lint", "--configfile", str(write_config(tmp_path, config, "c.yaml")),
                       cwd=ROOT)
    assert result.returncode == 0 and "Lints for" not in result.stdout + result.stderr, \
        (result.stdout + result.stderr)[-3000:]


def test_no_rule_names_an_architecture():
    """Adding a model touches no rule: the Snakefile and rules/*.smk name no architecture."""
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        words = set(re.findall(r"[a-z0-9_]+", path.read_text().lower()))
        assert not words & set(ARCHS), f"{path.name} names {sorted(words & set(ARCHS))}"


GPU_DEVICES = {"evaluate": "cuda", "latency": "cuda:0", "finetune": "auto", "prune": "cuda"}
DEVICE_RULES = {"evaluate_teacher": "evaluate", "evaluate_stage": "evaluate", "visual": "evaluate",
                "score_units": "prune", "search_masks": "prune", "finetune": "finetune",
                "latency": "latency"}


@pytest.mark.parametrize("on_gpu", [True, False], ids=["gpu-config", "cpu-config"])
def test_slurm_profile_routes_every_gpu_job(tmp_path, on_gpu):
    """A dry run through the SLURM executor (no SLURM needed): every job whose device the config
    sets asks for a GPU exactly when that device is not cpu (auto too), and the profile's
    partitions.yaml sends GPU jobs to the gpu partition and the others to cpu."""
    config = default_config()
    for section, device in GPU_DEVICES.items():
        config[section]["device"] = device if on_gpu else "cpu"
    jobs = jobs_of(dry_run("--forceall", "--profile", "profiles/slurm", "--configfile",
                           str(write_config(tmp_path, config, "c.yaml"))))
    for rule, blocks in jobs.items():
        wanted = int(on_gpu and rule in DEVICE_RULES)
        for block in blocks:
            assert resources_of(block).get("gpu", "0") == str(wanted), (rule, block)
            assert partition_of(resources_of(block)) == ("gpu" if wanted else "cpu"), rule


def partition_of(resources: dict[str, str]) -> str:
    """The partition the SLURM plugin picks, from profiles/slurm/partitions.yaml, for a job
    with these resources (the plugin's own scoring)."""
    from snakemake_executor_plugin_slurm.partitions import read_partition_file

    values = {k: int(v) if v.isdigit() else v for k, v in resources.items()}
    job = SimpleNamespace(name="job", threads=values.get("_cores", 1), resources=values)
    scored = [(p.score_job_fit(job), p.name)
              for p in read_partition_file(ROOT / "profiles/slurm/partitions.yaml")]
    return max((score, name) for score, name in scored if score is not None)[1]


def test_real_use_config_names_what_is_missing(workflow_copy):
    result = snakemake("-n", "--cores", "1", "--configfile", "config/catanet_x2_div2k.yaml",
                       cwd=workflow_copy)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "missing inputs named in the config" in text
    assert "teacher.weights_path: weights/CATANet-L_x2.pth" in text
    assert "prune.calibration.hr: data/DIV2K/DIV2K_train_HR" in text


def test_swinir_release_config_says_where_to_get_the_checkpoint(workflow_copy):
    result = snakemake("-n", "--cores", "1", "--configfile", "config/swinir_light_x4.yaml",
                       cwd=workflow_copy)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "missing inputs named in the config" in text
    assert ("teacher.weights_path: weights/SwinIR-S_x4.pth (get it from https://github.com/"
            "JingyunLiang/SwinIR/releases/download/v0.0/") in text


def test_optin_settings_reach_score_units(tmp_path):
    """prune.optin's scorer, probes, lam and scoring crops appear on OPTIN's score-units command
    line; the other methods score, and search-masks and compensate measure, on
    prune.calibration's crops."""
    config = default_config()
    config["prune"]["optin"].update(scorer="sketch", probes=3, lam=0.25, num_crops=3,
                                    crop_size=24)
    config["prune"].update(selection="measured")  # so that a compensate job runs
    config["prune"]["calibration"].update(num_crops=9, crop_size=40)
    text = dry_run("-p", "--forceall", "--cores", "1", "--configfile",
                   str(write_config(tmp_path, config, "optin.yaml")))
    assert "--lam 0.25" in text and "--scorer sketch --probes 3" in text
    lines = text.splitlines()
    for command, crops in (("score-units --teacher", "--num-crops 3 --crop-size 24"),
                           ("search-masks", "--num-crops 9 --crop-size 40"),
                           ("srprune compensate", "--num-crops 9 --crop-size 40")):
        mine = [line for line in lines if command in line
                and ("--method optin" in line or "score-units" not in command)]
        assert mine and all(crops in line for line in mine), command
    others = [line for line in lines if "score-units --teacher" in line
              and "--method optin" not in line]
    assert others and all("--num-crops 9 --crop-size 40" in line for line in others)
    config["prune"]["optin"]["scorer"] = "fast"
    bad = snakemake("-n", "--cores", "1", "--configfile",
                    str(write_config(tmp_path, config, "bad.yaml")), cwd=ROOT)
    assert bad.returncode != 0 and "Error validating config" in bad.stdout + bad.stderr


@pytest.mark.parametrize("teacher, message", [
    (None, "'teacher' is a required property"),
    ({}, "'weights_path' is a required property"),
], ids=["no-teacher", "empty-teacher"])
def test_a_user_config_without_its_teacher_is_an_error(tmp_path, teacher, message):
    """A --configfile is the whole config: the demo teacher never stands in for a missing one."""
    config = {"run": "mine", "scale": 2, "datasets": {"mine": {"hr": "embedded:val"}}}
    if teacher is not None:
        config["teacher"] = teacher
    result = snakemake("-n", "--cores", "1", "--configfile",
                       str(write_config(tmp_path, config, "mine.yaml")), cwd=ROOT)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "Error validating config" in text and message in text


def test_a_user_config_evaluates_only_its_own_data_sets(tmp_path, make_images):
    """The demo's data sets (embedded_val) never join a user's run; the schema's defaults fill
    what the user's config leaves out."""
    hr = make_images(tmp_path / "set5", 2, (24, 20))
    config = {"run": "mine", "scale": 2, "teacher": {"weights_path": str(ROOT / DEMO_TEACHER)},
              "datasets": {"Set5": {"hr": str(hr)}}}
    plan = dry_run("-p", "--cores", "1", "--configfile",
                   str(write_config(tmp_path, config, "mine.yaml")))
    assert "embedded_val" not in plan and "eval/teacher_Set5.json" in plan
    assert str(hr) in jobs_of(plan)["evaluate_teacher"][0].split("output:")[0]  # an input
    jobs = jobs_of(plan)
    assert len(jobs["evaluate_stage"]) == len(MODEL_STAGES)  # schema default: obs at 0.5 only
    assert all("results/mine/obs/0.5/" in b for b in jobs["search_masks"])


def test_swinir_onnx_export_builds_its_dag(workflow_copy):
    config = default_config()
    config["teacher"] = {"weights_path": str(ROOT / "weights/demo_swinir_x2.pth"), "arch": "swinir"}
    config["export"]["formats"] = ["onnx"]
    plan = dry_run("-p", "--forceall", "--cores", "2", "--configfile",
                   str(write_config(workflow_copy, config, "swinir.yaml")), cwd=workflow_copy)
    jobs = jobs_of(plan)
    prune = config["prune"]
    assert len(jobs["export"]) == len(prune["methods"]) * len(prune["budgets"])
    assert "catanet" not in plan
    latency = jobs["latency"][0]
    assert latency.count("swinir_rebuilt.onnx") >= 2 * 6  # inputs, and --onnx on the command
    assert "--onnx optin/0.7=results/demo/optin/0.7/swinir_rebuilt.onnx" in latency


@pytest.mark.skipif(not (shutil.which("conda") or shutil.which("mamba")),
                    reason="--use-conda needs conda or mamba on PATH (and conda-forge and PyPI "
                           "reachable); neither is installed here")
def test_conda_environment_is_created(workflow_copy):
    result = snakemake("--use-conda", "--conda-create-envs-only", "--cores", "1",
                       cwd=workflow_copy)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_invalid_config_is_rejected(workflow_copy):
    result = snakemake("-n", "--cores", "1", "--config", "scale=5", cwd=workflow_copy)
    assert result.returncode != 0
    assert "Error validating config" in result.stderr + result.stdout


def test_tiny_run_writes_evaluation_json(workflow_copy, make_images):
    tiny_teacher(workflow_copy / "teacher.pth")
    make_images(workflow_copy / "hr", 2, (24, 20))
    config = tiny_config(workflow_copy, "teacher.pth", "hr", ["optin", "magnitude"], [0.9, 0.8],
                         {"iters": 4, "batch_size": 2, "val_every": 2, "save_every": 2})
    result = snakemake("--cores", "2", cwd=workflow_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    teacher_json = json.loads((workflow_copy / "results/tiny/eval/teacher_mine.json").read_text())
    bicubic_json = json.loads((workflow_copy / "results/tiny/eval/bicubic_mine.json").read_text())
    assert len(teacher_json["per_image"]) == 2 and teacher_json["macs_full"] > 0
    assert bicubic_json["macs_full"] is None
    assert "comparison in results/tiny/comparison.csv" in result.stdout + result.stderr
    rows = list(csv.DictReader(open(workflow_copy / "results/tiny/comparison.csv")))
    teacher_row = next(r for r in rows if r["stage"] == "teacher")
    for budget in ("0.9", "0.8"):
        by_stage = {r["stage"]: r for r in rows if r["method"] == "optin" and r["budget"] == budget}
        assert set(by_stage) == {"zeroed", "compensated", "finetuned", "rebuilt"}
        assert int(by_stage["rebuilt"]["params_total"]) < int(teacher_row["params_total"])
        assert abs(float(by_stage["rebuilt"]["psnr"])
                   - float(by_stage["finetuned"]["psnr"])) <= 0.001
        assert float(by_stage["zeroed"]["mac_ratio"]) <= float(budget)
    for picture in ("kept_units.png", "visual_mine.png", "finetune_recovery.png"):
        assert (workflow_copy / "results/tiny" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (workflow_copy / "results/tiny/images/teacher_mine").glob("*.png")) \
        == ["im0_teacher.png", "im1_teacher.png"]
    for log in (workflow_copy / "results/tiny/logs").iterdir():      # readable progress lines
        assert "\r" not in log.read_text(), log.name
    assert "train: 100% 4/4 it" in (workflow_copy / "results/tiny/logs/finetune_optin_0.9.log").read_text()
    timing = json.loads((workflow_copy / "results/tiny/latency.json").read_text())
    assert [r["label"] for r in timing["models"]] == [
        "teacher", "optin/0.9", "optin/0.8", "magnitude/0.9", "magnitude/0.8"]
    assert timing["machine"]["threads"] == 2 and timing["lr_size"] == [90, 160]
    by_label = {r["label"]: r for r in timing["models"]}
    for row in rows:   # measured for teacher and rebuilt; dense rows carry the teacher's
        if row["stage"] == "bicubic":
            assert row["latency_ms"] == ""
            continue
        dense = row["stage"] not in ("teacher", "rebuilt")
        own = by_label["teacher" if dense or row["stage"] == "teacher"
                       else f"{row['method']}/{row['budget']}"]
        assert float(row["latency_ms"]) == own["median_ms"]
        assert float(row["speedup"]) == (1.0 if dense else own["speedup"])
        assert row["latency_source"] == ("dense (teacher's)" if dense else "measured")
        assert row["latency_threads"] == "2" and row["latency_lr_size"] == "90x160"
    for method in ("optin", "magnitude"):
        for budget in ("0.9", "0.8"):
            folder = workflow_copy / "results/tiny" / method / budget
            masks = torch.load(folder / "catanet_pruning_masks.pth", weights_only=True)
            assert masks["achieved_mac_ratio"] <= float(budget)
            assert masks["method"] == method and masks["mac_constraint"] == float(budget)
            zeroed = json.loads((folder / "eval_zeroed_mine.json").read_text())
            assert zeroed["params_nonzero"] < teacher_json["params_nonzero"]
            tuned = json.loads((folder / "eval_finetuned_mine.json").read_text())
            rebuilt = json.loads((folder / "eval_rebuilt_mine.json").read_text())
            assert abs(rebuilt["psnr"] - tuned["psnr"]) <= 0.001
            assert rebuilt["params"] < teacher_json["params"]
            assert rebuilt["macs_full"] == masks["macs_pruned"]
            sparsity = json.loads((folder / "sparsity.json").read_text())
            assert len(sparsity) == 4
            compensated = torch.load(folder / "catanet_compensated.pth", weights_only=True)
            assert compensated["meta"]["stage"] == "compensated"
            assert next(v for k, v in sparsity.items() if k.endswith("catanet_compensated.pth"))[
                "masks_consistent"]
    again = snakemake("-n", "--cores", "1", cwd=workflow_copy)   # nothing stale: nothing to do
    assert "Nothing to be done" in again.stdout + again.stderr

    # one target builds only what it needs
    target = snakemake("-n", "--forceall", "--cores", "1", "results/tiny/optin/0.9/catanet_rebuilt.pth",
                       cwd=workflow_copy)
    text = target.stdout + target.stderr
    assert "rule rebuild:" in text and "rule score_units:" in text
    assert "magnitude" not in text and "/0.8/" not in text and "rule compare:" not in text

    report = snakemake("--report", "report.html", cwd=workflow_copy)
    assert report.returncode == 0, report.stderr[-2000:]
    html = (workflow_copy / "report.html").read_bytes()
    for name in ("comparison.csv", "kept_units.png", "psnr_vs_macs_mine.png", "visual_mine.png",
                 "finetune_recovery.png"):
        assert name.encode() in html, name

    # the run timed its own heavy stages
    for job in ("score_units_optin", "search_masks_magnitude_0.8", "finetune_optin_0.9", "latency"):
        assert "s\th:m:s" in (workflow_copy / f"results/tiny/benchmarks/{job}.tsv").read_text()
    assert (workflow_copy / "results/tiny/optin/0.9/finetune_log.csv").read_text() == \
        (workflow_copy / "results/tiny/optin/0.9/finetune_work/log.csv").read_text()

    # a changed setting reruns exactly the jobs whose command uses it, and what follows them
    rerun = {"finetune": (("finetune", "train", "lr"), 1e-3), "scale": (("scale",), 3)}
    for what, (keys, value) in rerun.items():
        changed = yaml.safe_load(yaml.safe_dump(config))
        functools.reduce(dict.__getitem__, keys[:-1], changed)[keys[-1]] = value
        write_config(workflow_copy, changed)
        assert rerun_reasons(workflow_copy) == RERUNS[what], what


RERUNS = {  # rule -> why it reruns after a change of the setting (the first reason Snakemake
    # names: visual's scale changed too, but its inputs are rebuilt anyway)
    "finetune": {"finetune": "params", "rebuild": "input", "evaluate_stage": "input",
                 "inspect": "input", "latency": "input", "compare": "input", "visual": "input",
                 "recovery_plot": "input"},
    "scale": {"evaluate_teacher": "params", "evaluate_baseline": "params",
              "evaluate_stage": "params", "visual": "input", "compare": "input"},
}


def rerun_reasons(root: Path) -> dict[str, str]:
    """``{rule: "params" | "input"}`` of what ``snakemake -n`` would run, and why."""
    reasons = {}
    for rule, blocks in jobs_of(dry_run("--cores", "1", cwd=root)).items():
        if rule != "all":
            why = {("params" if "Params have changed" in b else "input") for b in blocks}
            reasons[rule] = "params" if "params" in why else "input"
    return reasons


def test_paths_with_spaces(tmp_path, make_images):
    """Every rule quotes its paths: a workflow folder, teacher and images with spaces run."""
    root = copy_workflow(tmp_path / "my work")
    (root / "the teacher").mkdir()
    tiny_teacher(root / "the teacher/teacher x2.pth")
    make_images(root / "hr images", 2, (24, 20))
    config = tiny_config(root, "the teacher/teacher x2.pth", "hr images", ["magnitude"], [0.8],
                         {"iters": 1, "batch_size": 1, "val_every": 1})
    config["prune"]["selection"] = "knapsack"
    write_config(root, config)
    plan = dry_run("-p", "--forceall", "--cores", "1", cwd=root)
    prefix = "Shell command: "
    commands = [shlex.split(line[len(prefix):]) for line in plan.splitlines()
                if line.startswith(prefix)]
    assert len(commands) == 18, commands   # every job of the run
    for words in commands:    # every path one word: no 'the', 'teacher/teacher', 'x2.pth' words
        assert not {"the", "teacher/teacher", "x2.pth", "images"} & set(words), words
    assert sum("the teacher/teacher x2.pth" in words for words in commands) == 7
    target = "results/tiny/magnitude/0.8/eval_rebuilt_mine.json"   # a real run through it
    result = snakemake("--cores", "2", target, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((root / target).read_text())["psnr"] > 0


@pytest.mark.parametrize("compensate", [True, False])
def test_finetuning_starts_from_the_model_prune_compensate_names(workflow_copy, compensate):
    config = default_config()
    config["teacher"]["weights_path"] = str(ROOT / DEMO_TEACHER)
    config["prune"]["compensate"] = compensate
    write_config(workflow_copy, config)
    target = "results/demo/optin/0.5/catanet_finetuned.pth"
    jobs = jobs_of(dry_run("-p", "--cores", "1", target, cwd=workflow_copy))
    start = "catanet_compensated.pth" if compensate else "catanet_zeroed.pth"
    assert f"--student results/demo/optin/0.5/{start}" in jobs["finetune"][0]
    assert ("export_zeroed" in jobs) == (not compensate)   # the search writes the compensated


def test_tiny_swinir_run(workflow_copy, make_images):
    """The same rules run a SwinIR teacher: swinir_<stage>.pth artifacts, rebuilt equals tuned."""
    tiny_swinir_teacher(workflow_copy / "teacher.pth")
    make_images(workflow_copy / "hr", 2, (24, 20))
    config = tiny_config(workflow_copy, "teacher.pth", "hr", ["optin", "random"], [0.7],
                         {"iters": 2, "batch_size": 2, "val_every": 1, "save_every": 1})
    config["teacher"]["arch"] = "swinir"
    config["latency"].update(size="16x16", rounds=2, warmup=1)
    write_config(workflow_copy, config)
    result = snakemake("--cores", "2", cwd=workflow_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    run = workflow_copy / "results/tiny"
    assert not list(run.rglob("catanet_*"))
    rows = list(csv.DictReader(open(run / "comparison.csv")))
    teacher_row = next(r for r in rows if r["stage"] == "teacher")
    for method in ("optin", "random"):
        folder = run / method / "0.7"
        masks = torch.load(folder / "swinir_pruning_masks.pth", weights_only=True)
        assert masks["achieved_mac_ratio"] <= 0.7 and masks["method"] == method
        tuned = json.loads((folder / "eval_finetuned_mine.json").read_text())
        rebuilt = json.loads((folder / "eval_rebuilt_mine.json").read_text())
        assert abs(rebuilt["psnr"] - tuned["psnr"]) <= 0.001
        assert rebuilt["macs_full"] == masks["macs_pruned"]
        assert rebuilt["params"] < int(teacher_row["params_total"])
        model = srprune.load_model(folder / "swinir_rebuilt.pth")
        assert type(model).__name__ == "SwinIR"
        sparsity = json.loads((folder / "sparsity.json").read_text())
        assert next(v for k, v in sparsity.items() if k.endswith("swinir_compensated.pth"))[
            "masks_consistent"]
    stages = {(r["stage"], r["method"]) for r in rows}
    assert {("rebuilt", "optin"), ("compensated", "random"), ("bicubic", "")} <= stages
    for picture in ("kept_units.png", "visual_mine.png", "finetune_recovery.png"):
        assert (run / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
