"""The tiny workflow on a real one-node SLURM cluster, through a test variant of profiles/slurm.

Needs the cluster of tests/cluster/start-slurm.sh (CI starts it; by hand: `sudo bash
tests/cluster/start-slurm.sh`). Without a running SLURM the test skips, except under CI
(CI=true), where a missing cluster is a failure.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from workflow_run import (ROOT, copy_workflow, dry_run, jobs_of, snakemake, tiny_config,
                          tiny_teacher, write_config)

ACCOUNT = "srprune"  # the test cluster's account (start-slurm.sh)
LOCAL_RULES = {"all", "compare", "recovery_plot", "gather_scores"}
TIMING_COLUMNS = {"latency_ms", "speedup", "latency_machine", "latency_threads"}


def slurm_running() -> bool:
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True)
    return result.returncode == 0 and any(line.split()[-1].startswith(("idle", "mix", "alloc"))
                                          for line in result.stdout.splitlines())


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if not slurm_running():
        message = ("no SLURM cluster is running here (sinfo shows no usable node); start the "
                   "test cluster with `sudo bash tests/cluster/start-slurm.sh`")
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (.ci/run should have)")
        pytest.skip(message)


def slurm_test_profile(dest: Path) -> Path:
    """profiles/slurm with the test cluster's account, and requests this one node can grant
    (one CPU, 500 MB, 30 minutes per job; fast status checks). Its routing is unchanged."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    small = {"mem_mb": 500, "cpus_per_task": 1, "runtime": 30}
    profile["default-resources"].update(slurm_account=ACCOUNT, **small)
    profile["set-threads"] = dict.fromkeys(profile["set-threads"], 1)
    profile["set-resources"] = {rule: {**res, **small}
                                for rule, res in profile["set-resources"].items()}
    profile.update({"jobs": 4, "latency-wait": 5, "retries": 0,
                    "slurm-init-seconds-before-status-checks": 1,
                    "seconds-between-status-checks": 2})
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    return dest


def tiny_run(root: Path, teacher: Path, make_images) -> Path:
    """``teacher`` (the same file in every run), OPTIN scores split over two jobs, one budget,
    two fine-tuning steps."""
    copy_workflow(root)
    shutil.copy(teacher, root / "teacher.pth")
    make_images(root / "hr", 2, (24, 20))
    config = tiny_config(root, "teacher.pth", "hr", ["optin"], [0.8],
                         {"iters": 2, "batch_size": 2, "val_every": 1, "save_every": 1})
    config["prune"]["score_jobs"] = 2
    config["latency"].update(size="16x16", rounds=2, warmup=0)
    write_config(root, config)
    return root


def test_the_tiny_workflow_runs_as_slurm_jobs(tmp_path, make_images):
    """Every rule but the local ones is a SLURM job (sacct lists each, in the cpu partition,
    under the profile's account); scoring is split over two jobs; the results equal those of
    a local run of the same config."""
    tiny_teacher(tmp_path / "teacher.pth", blocks=2)
    local, on_cluster = (tiny_run(tmp_path / name, tmp_path / "teacher.pth", make_images)
                         for name in ("local", "cluster"))
    plan = jobs_of(dry_run("--cores", "1", cwd=on_cluster))
    expected = Counter({rule: len(jobs) for rule, jobs in plan.items() if rule not in LOCAL_RULES})
    assert expected["score_units"] == 2 and "gather_scores" in plan
    ran = snakemake("--cores", "2", cwd=local)
    assert ran.returncode == 0, ran.stderr[-3000:]
    ran = snakemake("--profile", str(slurm_test_profile(tmp_path / "profile")), cwd=on_cluster)
    text = ran.stdout + ran.stderr
    assert ran.returncode == 0, text[-5000:]
    rows = sacct_jobs(re.search(r"SLURM run ID: (\S+)", text).group(1), sum(expected.values()))
    assert Counter(rule_of(row["Comment"]) for row in rows) == expected, rows
    assert {(r["Partition"], r["Account"], r["State"]) for r in rows} == \
        {("cpu", ACCOUNT, "COMPLETED")}
    assert not list((on_cluster / "results/tiny/optin").glob("unit_scores.part*"))  # temp()
    assert_same_results(on_cluster, local)


def rule_of(comment: str) -> str:
    """The rule of a SLURM job from the comment the plugin gives it (rule_<name>_wildcards_...)."""
    return re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", comment).group(1)


def sacct_jobs(run_id: str, expected: int) -> list[dict[str, str]]:
    """The cluster's accounting records of a Snakemake run (waits for them to arrive)."""
    fields = ["JobName", "Comment", "Partition", "Account", "State"]
    for _ in range(30):
        out = subprocess.run(["sacct", "-X", "-P", "-n", "--name", run_id,
                              f"--format={','.join(fields)}"],
                             capture_output=True, text=True, check=True).stdout
        rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]
        if len(rows) >= expected and all(r["State"] == "COMPLETED" for r in rows):
            return rows
        time.sleep(1)
    return rows


def comparison(root: Path) -> list[dict[str, str]]:
    with open(root / "results/tiny/comparison.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS}
                for row in csv.DictReader(handle)]


def assert_same_results(cluster_run: Path, local_run: Path) -> None:
    """Every artifact and evaluation of the cluster run equals the local run's."""
    files = sorted(p.relative_to(local_run) for p in (local_run / "results/tiny").rglob("*")
                   if p.suffix in (".pth", ".json") and p.name != "latency.json"
                   and "finetune_work" not in p.parts)  # the job's resume state: file checksums
    assert len(files) > 10
    for name in files:
        ours, theirs = cluster_run / name, local_run / name
        if name.suffix == ".json":
            assert json.loads(ours.read_text()) == json.loads(theirs.read_text()), name
        else:
            a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (ours, theirs))
            assert_equal(a, b, str(name))
    assert comparison(cluster_run) == comparison(local_run)


def assert_equal(a, b, where: str) -> None:
    """``a == b`` for nested dicts, lists and tensors (bit-equal), but for the wall-clock times
    some artifacts record (``seconds``, ``*_seconds``), which no two runs share."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if not (key == "seconds" or str(key).endswith("_seconds")):
                assert_equal(a[key], b[key], f"{where}:{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
