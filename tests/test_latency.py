"""Side-by-side latency: interleaved rounds, per-round speed-ups, ``srprune time-models``."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import srprune
from srprune import latency
from srprune.cli import main
from srprune.latency import (Runner, compare_runners, interleaved_rounds, machine_facts,
                             pytorch_runner, round_ratios, summarize, time_models)
from srprune.models import create_model


def tiny_catanet(upscale: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("catanet", dim=8, block_num=1, qk_dim=8, mlp_dim=8, heads=2,
                        patch_size=[8], num_tokens=[4], group_size=[16], n_iters=[1],
                        upscale=upscale)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny x2 teacher, a byte-identical copy of it, and an x3 model."""
    root = tmp_path_factory.mktemp("latency")
    srprune.save_model(tiny_catanet(), root / "teacher.pth")
    shutil.copy(root / "teacher.pth", root / "copy.pth")
    srprune.save_model(tiny_catanet(upscale=3), root / "x3.pth")
    return root


def test_rounds_call_every_runner_in_order_after_warmup():
    calls, syncs = [], []
    runners = [Runner(name, lambda x, name=name: calls.append((name, x))) for name in "tab"]
    samples = interleaved_rounds(runners, "input", rounds=4, warmup=2,
                                 synchronize=lambda: syncs.append(1))
    assert [name for name, _ in calls] == list("tab") * 6
    assert {x for _, x in calls} == {"input"}  # the same input for every call
    assert len(syncs) == 18 and [len(s) for s in samples] == [4, 4, 4]
    assert all(t >= 0 for s in samples for t in s)


def test_speedup_is_the_median_of_per_round_ratios(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])
    durations = {"teacher": iter([1.0, 0.010, 0.040, 0.010]),   # first: the warm-up round
                 "small": iter([1.0, 0.005, 0.010, 0.010])}

    def advance(name):
        def run(x):
            clock[0] += next(durations[name])
        return run

    rows = compare_runners([Runner(n, advance(n)) for n in durations], None, rounds=3, warmup=1)
    teacher, small = rows
    assert teacher["speedup"] == 1.0 and teacher["label"] == "teacher"
    assert small["times_ms"] == pytest.approx([5.0, 10.0, 10.0])
    assert small["median_ms"] == pytest.approx(10.0) and teacher["median_ms"] == pytest.approx(10.0)
    assert small["speedup"] == pytest.approx(2.0)  # ratios 2, 4, 1; the medians' ratio is 1
    assert small["speedup_q1"] == pytest.approx(1.5) and small["speedup_q3"] == pytest.approx(3.0)
    assert small["backend"] == "pytorch"


def test_summarize_and_ratios():
    assert summarize([3, 1, 2, 10]) == {"median_ms": 2.5, "q1_ms": 1.75, "q3_ms": 4.75,
                                         "min_ms": 1.0, "max_ms": 10.0,
                                         "times_ms": [3.0, 1.0, 2.0, 10.0]}
    assert summarize([4])["q1_ms"] == summarize([4])["q3_ms"] == 4.0
    assert round_ratios([10, 20], [5, 40]) == [2.0, 0.5]
    with pytest.raises(ValueError, match="2 reference rounds against 1"):
        round_ratios([1, 2], [1])


def test_runner_errors():
    run = Runner("a", lambda x: None)
    with pytest.raises(ValueError, match=r"repeated: a \(pytorch\)"):
        interleaved_rounds([run, run], None, rounds=1)
    interleaved_rounds([run, Runner("a", lambda x: None, backend="onnxruntime")], None, rounds=1)
    with pytest.raises(ValueError, match="at least one runner"):
        interleaved_rounds([], None, rounds=1)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        interleaved_rounds([run], None, rounds=0)
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        interleaved_rounds([run], None, rounds=1, warmup=-1)


def test_pytorch_runner_runs_in_eval_mode_without_gradients():
    seen = []
    model = torch.nn.Conv2d(3, 3, 1).train()
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    runner = pytorch_runner("conv", model, {"params": 12})
    assert runner.fn(torch.rand(1, 3, 4, 4)).shape == (1, 3, 4, 4)
    assert seen == [(False, False)] and runner.info == {"params": 12}


def test_two_copies_of_one_model_time_alike(checkpoints):
    result = time_models(str(checkpoints / "teacher.pth"), {"copy": str(checkpoints / "copy.pth")},
                         lr_size=(24, 24), rounds=100, warmup=3, threads=1)
    copy = result["models"][1]
    assert copy["label"] == "copy" and len(copy["times_ms"]) == 100
    assert 0.9 <= copy["speedup"] <= 1.1, copy["speedup"]


def test_time_models_command_writes_the_record(checkpoints, tmp_path, capsys):
    before = torch.get_num_threads()
    out = tmp_path / "latency.json"
    code = main(["time-models", "--teacher", str(checkpoints / "teacher.pth"),
                 "--model", f"optin/0.5={checkpoints / 'copy.pth'}", "--size", "12x16",
                 "--rounds", "3", "--warmup", "1", "--threads", "1", "--json", str(out)])
    assert code == 0 and torch.get_num_threads() == before  # the thread count is restored
    assert "speed-up" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["kind"] == "latency" and result["reference"] == "teacher"
    assert result["lr_size"] == [12, 16] and result["scale"] == 2 and result["batch"] == 1
    assert result["rounds"] == 3 and result["warmup"] == 1 and result["dtype"] == "float32"
    machine = result["machine"]
    assert machine["threads"] == 1 and machine["device"] == "cpu"
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["cpu_name"] and machine["torch"] == torch.__version__
    teacher, model = result["models"]
    assert (teacher["label"], model["label"]) == ("teacher", "optin/0.5")
    assert teacher["speedup"] == 1.0 and teacher["params"] == model["params"] > 0
    assert model["backend"] == "pytorch" and model["model"].endswith("copy.pth")
    for row in result["models"]:
        assert len(row["times_ms"]) == 3
        assert row["min_ms"] <= row["q1_ms"] <= row["median_ms"] <= row["q3_ms"] <= row["max_ms"]


def test_onnx_runtime_files_join_the_same_rounds(checkpoints, tmp_path, capsys):
    """--onnx adds an onnxruntime row per file, timed in the rounds, its speed-up against the
    PyTorch teacher; the ONNX model here is a stand-in x2 upscaler of the timed input size."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    stand_in = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    onnx_file = tmp_path / "model.onnx"
    torch.onnx.export(stand_in.eval(), (torch.rand(1, 3, 12, 16),), str(onnx_file), dynamo=False)
    out = tmp_path / "latency.json"
    code = main(["time-models", "--teacher", str(checkpoints / "teacher.pth"),
                 "--model", f"optin/0.5={checkpoints / 'copy.pth'}",
                 "--onnx", f"optin/0.5={onnx_file}", "--size", "12x16", "--rounds", "3",
                 "--threads", "1", "--json", str(out)])
    assert code == 0 and "onnxruntime" in capsys.readouterr().out
    rows = json.loads(out.read_text())["models"]
    assert [(r["label"], r["backend"]) for r in rows] == [
        ("teacher", "pytorch"), ("optin/0.5", "pytorch"), ("optin/0.5", "onnxruntime")]
    onnx = rows[2]
    assert len(onnx["times_ms"]) == 3 and onnx["model"] == str(onnx_file)
    ratios = round_ratios(rows[0]["times_ms"], onnx["times_ms"])
    assert onnx["speedup"] == pytest.approx(sorted(ratios)[1])
    assert main(["time-models", "--teacher", str(checkpoints / "teacher.pth"),
                 "--onnx", f"a={onnx_file}", "--onnx", f"a={onnx_file}"]) == 2
    assert "every label must be different" in capsys.readouterr().err


def test_time_models_default_size_is_the_reference(monkeypatch, checkpoints):
    monkeypatch.setattr(latency, "compare_runners",
                        lambda runners, x, *a: [{"shape": list(x.shape)}])
    result = time_models(str(checkpoints / "teacher.pth"), {})
    assert result["lr_size"] == [360, 640] and result["models"] == [{"shape": [1, 3, 360, 640]}]


def test_time_models_errors(checkpoints, capsys):
    teacher = str(checkpoints / "teacher.pth")
    with pytest.raises(ValueError, match="different scales"):
        time_models(teacher, {"x3": str(checkpoints / "x3.pth")}, lr_size=(8, 8), rounds=1)
    with pytest.raises(ValueError, match="label 'teacher' is the teacher's"):
        time_models(teacher, {"teacher": teacher}, lr_size=(8, 8), rounds=1)
    assert main(["time-models", "--teacher", teacher, "--model", "a=x.pth",
                 "--model", "a=y.pth"]) == 2
    assert "every label must be different" in capsys.readouterr().err
    assert main(["time-models", "--teacher", str(checkpoints / "absent.pth")]) == 2
    assert "absent.pth" in capsys.readouterr().err
    for bad in (["--size", "0x5"], ["--size", "big"], ["--rounds", "0"], ["--threads", "0"],
                ["--model", "=x.pth"]):
        with pytest.raises(SystemExit):
            main(["time-models", "--teacher", teacher, *bad])


def test_machine_facts():
    facts = machine_facts("cpu")
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["threads"] == torch.get_num_threads() and facts["logical_cpus"] >= 1
    json.dumps(facts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_timing(checkpoints):
    result = time_models(str(checkpoints / "teacher.pth"), {}, lr_size=(32, 32), rounds=2,
                         device="cuda")
    assert result["machine"]["device_name"] == torch.cuda.get_device_name(0)
