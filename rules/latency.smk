# Latency, side by side: the teacher and every rebuilt model timed in one process, in
# interleaved rounds on the same input. The rule takes every core of the run, so Snakemake
# schedules nothing beside it, and the command runs with that many threads and records them.
# The zeroed, compensated and fine-tuned files are dense (the teacher's shapes): the comparison
# gives them the teacher's latency instead of timing them. With `export.formats` holding onnx,
# each rebuilt model's .onnx file is timed with ONNX Runtime in the same rounds.


LATENCY_ONNX = "onnx" in config.get("export", {}).get("formats", [])


def latency_model_args(input):
    """--model <method>/<budget>=<rebuilt checkpoint> for every budget (labels compare reads),
    and --onnx <method>/<budget>=<its .onnx file> when ONNX export is on."""
    labels = [f"{m}/{b}" for m in METHODS for b in BUDGETS]
    pairs = [("--model", label, path) for label, path in zip(labels, input.models)]
    pairs += [("--onnx", label, path) for label, path in zip(labels, input.onnx)]
    return shlex.join(word for option, label, path in pairs for word in (option, f"{label}={path}"))


rule latency:
    input:
        teacher=config["teacher"]["weights_path"],
        models=expand(f"{RESULTS}/{{method}}/{{budget}}/{ARCH}_rebuilt.pth",
                      method=METHODS, budget=BUDGETS),
        onnx=expand(f"{RESULTS}/{{method}}/{{budget}}/catanet_rebuilt.onnx",
                    method=METHODS, budget=BUDGETS) if LATENCY_ONNX else [],
    output:
        f"{RESULTS}/latency.json",
    params:
        models=lambda wildcards, input: latency_model_args(input),
        model_config=teacher_config_arg(),
        size=LATENCY["size"],
        rounds=LATENCY["rounds"],
        warmup=LATENCY["warmup"],
        device=LATENCY["device"],
    log:
        f"{RESULTS}/logs/latency.log",
    threads: lambda wildcards: workflow.cores
    resources:
        gpu=1 if str(LATENCY["device"]).startswith("cuda") else 0,
    shell:
        "OMP_NUM_THREADS={threads} srprune time-models --teacher {input.teacher:q} "
        "{params.model_config} {params.models} --size {params.size} --rounds {params.rounds} "
        "--warmup {params.warmup} --threads {threads} --device {params.device} "
        "--json {output:q} > {log:q} 2>&1"
