"""``srprune.compare``: the run's table, Markdown and figures from a synthetic results folder."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch

from srprune.compare import (COLUMNS, MissingResultError, ResultFormatError, collect, compare,
                             discover, plot_kept_units)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METHODS = ["optin", "magnitude", "random"]
BUDGETS = ["0.7", "0.5"]
DATASETS = ["set5", "val"]
STAGES = ["zeroed", "compensated", "finetuned", "rebuilt"]
GROUPS = {"blocks.0.0.iasa_attn": 2, "blocks.0.0.mlp.fn": 6,
          "blocks.0.1.layer.0.fn": 2, "blocks.0.1.layer.1.fn": 6}
TEACHER_MACS = 40_006_209_536
TEACHER_PARAMS = 101_155
LR_SIZE = [360, 640]


def eval_json(psnr, ssim, params, nonzero, macs_full, macs_thop, model="x.pth"):
    """What ``srprune evaluate`` writes (the keys of results/demo, per_image shortened)."""
    data = {"model": model, "hr": "embedded:val", "lr": None, "scale": 2,
            "quantized_uint8": True, "crop_border": 2,
            "metric": "Y channel (BT.601), BasicSR conventions", "params": params,
            "params_nonzero": nonzero, "macs_thop": macs_thop, "macs_full": macs_full}
    if macs_full is not None:
        data["macs_lr_size"] = LR_SIZE
        data["macs_per_module"] = {"first_conv": 1, "blocks.0.0": 2}
    data.update(psnr=psnr, per_image=[{"name": "a", "psnr": psnr, "ssim": ssim}], ssim=ssim)
    return data


def latency_row(label, median, speedup, backend="pytorch"):
    """One row of what ``srprune time-models`` writes (samples shortened)."""
    return {"label": label, "backend": backend, "model": f"{label}.pth", "params": 1,
            "median_ms": median, "q1_ms": median - 1, "q3_ms": median + 1, "min_ms": median - 2,
            "max_ms": median + 2, "times_ms": [median], "speedup": speedup,
            "speedup_q1": speedup, "speedup_q3": speedup}


def latency_json(rows):
    return {"kind": "latency", "reference": "teacher", "rounds": 1, "warmup": 0,
            "lr_size": [90, 160], "scale": 2, "batch": 1, "dtype": "float32", "seed": 0,
            "machine": {"cpu_name": "Test CPU 9000", "cpu_capability": "AVX2", "threads": 2,
                        "device": "cpu", "device_name": "Test CPU 9000", "torch": "2.13"},
            "models": rows}


def kept_of(mi, bi):
    """Kept units per group for method index ``mi`` and budget index ``bi`` (all differ)."""
    return {g: max(0, n - 1 - (mi + bi + k) % n) for k, (g, n) in enumerate(GROUPS.items())}


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def build_results(root: Path) -> dict:
    """A results/<run> folder like the workflow's; returns the numbers written, for checking."""
    expected = {"teacher": {}, "bicubic": {}, "stage": {}, "masks": {}}
    timed = [latency_row("teacher", 50.0, 1.0)]
    for d, dataset in enumerate(DATASETS):
        teacher = eval_json(33.110560171903174 - d, 0.9414296659748792 - d / 10, TEACHER_PARAMS,
                            TEACHER_PARAMS, TEACHER_MACS, 23_237_939_200)
        bicubic = eval_json(31.149856476426027 - d, 0.915731258318008 - d / 10, 0, 0, None, None)
        write(root / "eval" / f"teacher_{dataset}.json", teacher)
        write(root / "eval" / f"bicubic_{dataset}.json", bicubic)
        expected["teacher"][dataset], expected["bicubic"][dataset] = teacher, bicubic
    for mi, method in enumerate(METHODS):
        (root / method).mkdir(parents=True)
        torch.save({"kind": "unit_scores"}, root / method / "unit_scores.pth")
        for bi, budget in enumerate(BUDGETS):
            folder = root / method / budget
            kept = kept_of(mi, bi)
            macs_pruned = 19_167_303_680 + 1_000_003 * (10 * mi + bi)
            masks = {g: torch.tensor([1.0] * kept[g] + [0.0] * (n - kept[g]))
                     for g, n in GROUPS.items()}
            artifact = {"kind": "pruning_masks", "masks": masks,
                        "scores": {g: torch.rand(n) for g, n in GROUPS.items()},
                        "method": method, "selection": "optin",
                        "mac_constraint": float(budget), "min_keep": 0,
                        "macs_teacher": TEACHER_MACS, "macs_pruned": macs_pruned,
                        "achieved_mac_ratio": macs_pruned / TEACHER_MACS,
                        "prunable_mac_ratio": 0.25 + 0.01 * (10 * mi + bi),
                        "macs_lr_size": LR_SIZE, "kept": kept,
                        "unit_costs": {g: 1000 for g in GROUPS}, "arch": "catanet"}
            folder.mkdir(parents=True)
            torch.save(artifact, folder / "catanet_pruning_masks.pth")
            expected["masks"][(method, budget)] = artifact
            # the speed-up is the median of per-round ratios, not the ratio of the medians
            timed.append(latency_row(f"{method}/{budget}", 20.0 + mi + bi, 2.0 + mi + 0.1 * bi))
            timed.append(latency_row(f"{method}/{budget}", 1.0, 50.0, backend="onnxruntime"))
            nonzero = 70_000 + 1_000 * mi + 100 * bi
            for si, stage in enumerate(STAGES):
                for d, dataset in enumerate(DATASETS):
                    rebuilt = stage == "rebuilt"
                    data = eval_json(
                        32.5 + 0.1 * si + 0.01 * mi + 0.001 * bi - d, 0.93 + 0.001 * si - d / 10,
                        nonzero if rebuilt else TEACHER_PARAMS, nonzero,
                        macs_pruned if rebuilt else TEACHER_MACS,
                        17_000_000_000 + mi if rebuilt else 23_237_939_200,
                        model=str(folder / f"catanet_{stage}.pth"))
                    write(folder / f"eval_{stage}_{dataset}.json", data)
                    expected["stage"][(stage, method, budget, dataset)] = data
    # srprune inspect's report for one budget (keyed by the path as given on its command line)
    write(root / "optin" / "0.5" / "sparsity.json",
          {f"results/run/optin/0.5/catanet_{s}.pth": {"masks_consistent": c, "totals": {}}
           for s, c in [("zeroed", True), ("compensated", True), ("finetuned", False),
                        ("rebuilt", None)]})
    (root / "logs").mkdir()
    (root / "logs" / "x.log").write_text("log\n")
    (root / "optin" / "0.5" / "finetune_work").mkdir()  # not a budget: ignored
    write(root / "latency.json", latency_json(timed))
    expected["latency"] = {(r["label"], r["backend"]): r for r in timed}
    return expected


@pytest.fixture()
def results(tmp_path):
    root = tmp_path / "results" / "myrun"
    expected = build_results(root)
    return root, expected


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """compare() run once on a fresh folder (the figures take about a second)."""
    root = tmp_path_factory.mktemp("compared") / "results" / "myrun"
    expected = build_results(root)
    out = root / "comparison"  # inside the results folder, as the workflow may put it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a consistent folder gives no warning
        paths = compare(root, out)
    with open(paths["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    return root, expected, paths, rows


def key(row):
    return row["stage"], row["method"], row["budget"], row["dataset"]


def test_discover_orders_methods_and_budgets(results):
    root, _ = results
    (root / "comparison").mkdir()
    assert discover(root) == {m: BUDGETS for m in METHODS}


def test_outputs_exist_and_pngs_are_valid(compared):
    root, _, paths, _ = compared
    out = root / "comparison"
    assert paths["csv"] == out / "comparison.csv"
    assert paths["markdown"] == out / "comparison.md"
    assert paths["kept_units"] == out / "kept_units.png"
    assert paths["psnr_vs_macs"] == {d: out / f"psnr_vs_macs_{d}.png" for d in DATASETS}
    for png in [paths["kept_units"], *paths["psnr_vs_macs"].values()]:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert png.stat().st_size > 10_000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_csv_has_every_row_in_order(compared):
    _, _, _, rows = compared
    assert list(rows[0]) == list(COLUMNS)
    expected = []
    for dataset in DATASETS:
        expected += [("teacher", "", "", dataset), ("bicubic", "", "", dataset)]
        expected += [(s, m, b, dataset) for m in METHODS for b in BUDGETS for s in STAGES]
    assert [key(r) for r in rows] == expected
    assert len(rows) == len(DATASETS) * (2 + len(STAGES) * len(METHODS) * len(BUDGETS))
    assert {r["run"] for r in rows} == {"myrun"}


def test_numbers_come_from_the_files(compared):
    _, exp, _, rows = compared
    for row in rows:
        stage, method, budget, dataset = key(row)
        teacher = exp["teacher"][dataset]
        if stage == "teacher":
            data = teacher
        elif stage == "bicubic":
            data = exp["bicubic"][dataset]
        else:
            data = exp["stage"][(stage, method, budget, dataset)]
        assert float(row["psnr"]) == data["psnr"]
        assert float(row["ssim"]) == data["ssim"]
        assert int(row["params_total"]) == data["params"]
        assert int(row["params_nonzero"]) == data["params_nonzero"]
        # relative columns: exactly the differences and ratios of the inputs
        assert float(row["delta_psnr"]) == data["psnr"] - teacher["psnr"]
        assert float(row["delta_ssim"]) == data["ssim"] - teacher["ssim"]
        assert float(row["params_ratio"]) == data["params_nonzero"] / teacher["params"]
        check_latency(row, exp["latency"])
        if stage == "bicubic":
            assert row["macs_full"] == row["effective_macs_full"] == row["mac_ratio"] == ""
            assert row["macs_thop"] == row["macs_lr_size"] == ""
            continue
        assert int(row["macs_full"]) == data["macs_full"]  # what the file itself computes
        if stage != "teacher":  # every stage of a budget shares its masks' prunable ratio
            assert float(row["prunable_mac_ratio"]) == \
                exp["masks"][(method, budget)]["prunable_mac_ratio"]
        assert int(row["macs_thop"]) == data["macs_thop"]
        assert row["macs_lr_size"] == "360x640"
        if stage in ("zeroed", "compensated", "finetuned"):
            masks = exp["masks"][(method, budget)]
            assert int(row["macs_full"]) == TEACHER_MACS  # dense arithmetic
            assert int(row["effective_macs_full"]) == masks["macs_pruned"]
            assert float(row["mac_ratio"]) == masks["achieved_mac_ratio"]
        else:  # teacher and rebuilt: their own measured count
            assert int(row["effective_macs_full"]) == data["macs_full"]
            assert float(row["mac_ratio"]) == data["macs_full"] / teacher["macs_full"]


def check_latency(row, timed):
    """Latency columns: measured for teacher and rebuilt, the teacher's for dense rows."""
    if row["stage"] == "bicubic":
        assert row["latency_ms"] == row["speedup"] == row["latency_source"] == ""
        assert row["latency_machine"] == row["latency_threads"] == row["latency_lr_size"] == ""
        return
    teacher = timed[("teacher", "pytorch")]
    if row["stage"] in ("zeroed", "compensated", "finetuned"):
        assert float(row["latency_ms"]) == teacher["median_ms"] and row["speedup"] == "1.0"
        assert row["latency_source"] == "dense (teacher's)"
    else:
        label = "teacher" if row["stage"] == "teacher" else f"{row['method']}/{row['budget']}"
        own = timed[(label, "pytorch")]  # never the onnxruntime row
        assert float(row["latency_ms"]) == own["median_ms"]
        assert float(row["speedup"]) == own["speedup"]
        assert row["latency_source"] == "measured"
    if row["stage"] == "rebuilt":   # ONNX Runtime in its own columns
        onnx = timed[(f"{row['method']}/{row['budget']}", "onnxruntime")]
        assert float(row["onnx_latency_ms"]) == onnx["median_ms"]
        assert float(row["onnx_speedup"]) == onnx["speedup"]
    else:
        assert row["onnx_latency_ms"] == row["onnx_speedup"] == ""
    assert row["latency_machine"] == "Test CPU 9000 (AVX2)"
    assert row["latency_threads"] == "2" and row["latency_lr_size"] == "90x160"


def test_rebuilt_rows_carry_their_own_size(compared):
    _, exp, _, rows = compared
    for row in (r for r in rows if r["stage"] == "rebuilt"):
        data = exp["stage"][key(row)]
        assert int(row["params_total"]) == data["params"] < TEACHER_PARAMS
        assert int(row["macs_full"]) == data["macs_full"] < TEACHER_MACS
        assert int(row["macs_thop"]) == data["macs_thop"]


def test_teacher_row_is_the_reference(compared):
    _, _, _, rows = compared
    for row in (r for r in rows if r["stage"] == "teacher"):
        assert float(row["mac_ratio"]) == float(row["params_ratio"]) == 1.0
        assert float(row["prunable_mac_ratio"]) == 1.0
        assert float(row["delta_psnr"]) == float(row["delta_ssim"]) == 0.0
        assert row["speedup"] == "1.0" and row["latency_source"] == "measured"


def test_masks_consistency_from_sparsity_json(compared):
    _, _, _, rows = compared
    found = {key(r): r["masks_consistent"] for r in rows if r["masks_consistent"]}
    assert found == {("zeroed", "optin", "0.5", d): "True" for d in DATASETS} | \
        {("compensated", "optin", "0.5", d): "True" for d in DATASETS} | \
        {("finetuned", "optin", "0.5", d): "False" for d in DATASETS}


def test_markdown_has_a_table_per_dataset(compared):
    _, exp, paths, rows = compared
    text = paths["markdown"].read_text()
    sections = text.split("## ")
    assert [s.splitlines()[0] for s in sections[1:]] == [*DATASETS, "Columns"]
    for section, dataset in zip(sections[1:], DATASETS):
        table = [line for line in section.splitlines() if line.startswith("| ")]
        assert len(table) == 1 + 2 + len(STAGES) * len(METHODS) * len(BUDGETS)  # header + rows
        assert "latency (ms)" in table[0] and "latency from" in table[0]
        assert "Latency measured side by side on Test CPU 9000 (AVX2), 2 thread(s), LR input " \
               "90x160, batch 1." in section
        assert table[1].startswith(f"| teacher |  |  | {TEACHER_PARAMS:,} | 1.000 | 40.006 |")
        psnr = exp["teacher"][dataset]["psnr"]
        assert f"| {psnr:.3f} | +0.000 |" in table[1]
        assert table[2].startswith("| bicubic |  |  | 0 | 0.000 | – | – | – |")
        data = exp["stage"][("rebuilt", "random", "0.5", dataset)]
        line = next(t for t in table if t.startswith("| rebuilt | random | 0.5 |"))
        assert f"| {data['macs_full'] / 1e9:.3f} | {data['macs_full'] / 1e9:.3f} |" in line
        assert f"| {data['psnr']:.3f} | {data['psnr'] - psnr:+.3f} |" in line
    assert "macs_pruned" in sections[-1]  # the columns are explained


def test_without_latency_json_latency_is_empty(results, tmp_path):
    root, _ = results
    (root / "latency.json").unlink()
    rows = collect(root)
    assert all(r["latency_ms"] is None and r["speedup"] is None for r in rows)
    paths = compare(root, tmp_path / "out")
    text = paths["markdown"].read_text()
    assert "latency (ms)" not in text and "Latency was not measured" in text


def test_latency_json_is_checked_and_a_missing_row_warns(results, tmp_path):
    root, exp = results
    with pytest.raises(MissingResultError, match="elsewhere.json"):
        collect(root, latency=tmp_path / "elsewhere.json")
    rows = [r for k, r in exp["latency"].items() if k != ("optin/0.5", "pytorch")]
    write(tmp_path / "partial.json", latency_json(rows))
    with pytest.warns(UserWarning, match="no row 'optin/0.5'"):
        found = collect(root, latency=tmp_path / "partial.json")
    untimed = [key(r) for r in found if r["stage"] != "bicubic" and r["latency_ms"] is None]
    assert untimed == [("rebuilt", "optin", "0.5", d) for d in DATASETS]
    write(tmp_path / "no_teacher.json", latency_json(rows[1:]))
    with pytest.raises(ResultFormatError, match="no PyTorch row for its reference 'teacher'"):
        collect(root, latency=tmp_path / "no_teacher.json")


def test_missing_eval_file_is_named(results, tmp_path):
    root, _ = results
    missing = root / "magnitude" / "0.5" / "eval_rebuilt_val.json"
    missing.unlink()
    with pytest.raises(MissingResultError, match="eval_rebuilt_val.json") as err:
        compare(root, tmp_path / "out")
    assert isinstance(err.value, FileNotFoundError)
    assert err.value.filename == str(missing)
    assert not (tmp_path / "out" / "comparison.csv").exists()


def test_missing_teacher_bicubic_or_masks_is_named(results):
    root, _ = results
    with pytest.raises(MissingResultError, match="teacher_set14.json"):
        collect(root, datasets=["set14"])
    with pytest.raises(MissingResultError, match=r"optin/0\.3/catanet_pruning_masks\.pth"):
        collect(root, layout={"optin": ["0.3"]})
    (root / "eval" / "bicubic_val.json").unlink()
    with pytest.raises(MissingResultError, match="bicubic_val.json"):
        collect(root)
    assert len(collect(root, baselines=())) == 2 * (1 + len(STAGES) * len(METHODS) * len(BUDGETS))
    (root / "random" / "0.7" / "catanet_pruning_masks.pth").unlink()
    with pytest.raises(MissingResultError, match="random/0.7/catanet_pruning_masks.pth"):
        collect(root, baselines=())
    with pytest.raises(MissingResultError, match="nowhere"):
        collect(root / "nowhere")


def test_malformed_files_are_value_errors(results):
    root, _ = results
    path = root / "optin" / "0.7" / "eval_zeroed_set5.json"
    data = json.loads(path.read_text())
    del data["macs_full"]
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFormatError, match="eval_zeroed_set5.json lacks the key.*macs_full"):
        collect(root)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        collect(root)


def test_inconsistent_mac_counts_warn(results):
    root, _ = results
    path = root / "optin" / "0.7" / "eval_rebuilt_val.json"
    data = json.loads(path.read_text())
    data["macs_full"] += 1
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="differs from the masks' macs_pruned"):
        rows = collect(root)
    row = next(r for r in rows if (r["stage"], r["method"], r["budget"], r["dataset"])
               == ("rebuilt", "optin", "0.7", "val"))
    assert row["macs_full"] == data["macs_full"]  # reported as measured, never replaced


def test_kept_units_from_plain_masks(tmp_path):
    masks = {("optin", "0.5"): {"blocks.0.0.iasa_attn": torch.tensor([1.0, 0.0]),
                                "blocks.0.0.mlp.fn": torch.tensor([1.0, 1.0, 0.0])},
             ("random", "0.5"): {"blocks.0.0.iasa_attn": torch.tensor([0.0, 0.0]),
                                 "blocks.0.0.mlp.fn": torch.tensor([1.0, 1.0, 1.0])}}
    path = plot_kept_units(masks, tmp_path / "kept.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    empty = plot_kept_units({}, tmp_path / "none.png")
    assert empty.read_bytes()[:8] == PNG_SIGNATURE


def test_kept_bar_of_channel_groups(tmp_path):
    """A channel group's bar is the channels kept per kept head, against a head's width."""
    from srprune.compare.plots import kept_bar

    masks = {"blocks.0.0.iasa_attn": torch.tensor([1.0, 0.0, 1.0]),
             "blocks.0.0.iasa_attn.qk": torch.tensor([1.0, 1, 0, 0, 0, 0, 0, 1, 1]),
             "blocks.0.0.mlp.fn": torch.tensor([1.0, 1.0, 0.0, 0.0])}
    assert kept_bar(masks, "blocks.0.0.iasa_attn.qk") == (2 / 3, "2", 3)
    assert kept_bar(masks, "blocks.0.0.iasa_attn") == (2 / 3, "2", 3)
    assert kept_bar(masks, "blocks.0.0.mlp.fn") == (0.5, "2", 4)
    path = plot_kept_units({("optin", "0.5"): masks}, tmp_path / "channels.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
