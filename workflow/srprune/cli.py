"""``srprune`` command line: one subcommand per pipeline stage (Snakemake rules call these)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import yaml

from .argtypes import (NamedDatasets, Parser, UniqueNames, crop_box, device, filename_template,
                       finite_float, height_by_width, int_at_least, lr_size, nonnegative_float,
                       output_file, output_folder, positive_int)
from .checkpoint import CheckpointError
from .data import DataError
from .export import FORMATS
from .models import DEFAULT_ARCH
from .pruning.selection import DEFAULT_SELECTION, SELECTIONS
from .tiling import BLEND_MODES

if TYPE_CHECKING:
    import numpy as np

    from .pruning.calibration import Calibration
    from .pruning.compensate import CompensationSettings

log = logging.getLogger("srprune")


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except OSError as err:
        raise SystemExit(f"error: cannot read config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise SystemExit(f"error: {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path} must hold a mapping, found {type(data).__name__}")
    return data


def cmd_train(args: argparse.Namespace) -> None:
    from .train import train_teacher

    workdir = _workdir(args)
    summary = train_teacher(_read_yaml(args.config), args.out, workdir,
                            progress=not args.quiet, fresh_on_change=args.fresh_on_change)
    _print_training(summary, args.out)


def _workdir(args: argparse.Namespace) -> str:
    """``--workdir``, or its default beside ``--out`` (checked like every output folder)."""
    from .fileio import check_output_path

    if args.workdir:
        return args.workdir
    return str(check_output_path(str(Path(args.out).with_suffix("")) + "_work", folder=True))


def _print_training(summary: dict, out: str) -> None:
    print(f"best validation PSNR {summary['best_psnr']:.3f} dB at iteration {summary['best_iter']}; "
          f"last {summary['last_psnr']:.3f} dB; model written to {out}")


def _training_args(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--out", type=output_file, required=True, help=out_help)
    p.add_argument("--workdir", type=output_folder,
                   help="resume state, last/best checkpoints and log.csv "
                        "(default: <out without suffix>_work)")
    p.add_argument("--fresh-on-change", action="store_true",
                   help="when the work folder holds a run of other settings, inputs or data, "
                        "start afresh (default: refuse and say what differs)")


def parse_dataset(text: str) -> tuple[str, dict[str, Any]]:
    """``"NAME=HR[,LR[,TMPL]]"`` -> ``(NAME, {"hr", "lr", "filename_tmpl"})``; argparse ``type=``."""
    name, sep, rest = str(text).partition("=")
    parts = rest.split(",")
    if not sep or not name or not parts[0] or len(parts) > 3:
        raise argparse.ArgumentTypeError(f"expected NAME=HR[,LR[,TMPL]], got {text!r}")
    spec = {"hr": parts[0], "lr": parts[1] if len(parts) > 1 and parts[1] else None,
            "filename_tmpl": filename_template(parts[2]) if len(parts) > 2 and parts[2] else "{}"}
    return name, spec


def add_evaluate_options(parser: argparse.ArgumentParser, datasets: bool = False) -> None:
    """Add ``--tile``, ``--tile-overlap``, ``--tile-blend`` (and, with ``datasets``, a repeatable
    ``--dataset``) to ``srprune evaluate``'s parser. Pair with :func:`evaluate_options`."""
    group = parser.add_argument_group("tiled inference and data sets")
    group.add_argument("--tile", type=int_at_least(1), metavar="PIXELS",
                       help="run the model on LR tiles of this side (bounded memory); default: whole images")
    group.add_argument("--tile-overlap", type=int_at_least(0), default=8, metavar="PIXELS",
                       help="overlap of neighbouring tiles in LR pixels (default 8; must be < --tile)")
    group.add_argument("--tile-blend", choices=BLEND_MODES, default="uniform",
                       help="weights of overlapping tile outputs: uniform mean (default, BasicSR's), "
                            "linear ramp, or crop (each pixel from the tile it is most inside)")
    if datasets:
        group.add_argument("--dataset", action=NamedDatasets, type=parse_dataset,
                           metavar="NAME=HR[,LR[,TMPL]]",
                           help="evaluate on this data set too (repeatable, one name once); "
                                "results under 'datasets' in the JSON")


def evaluate_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`.evaluate.evaluate_spec` / :func:`.evaluate.evaluate_many` from the options of
    :func:`add_evaluate_options` (missing attributes take the defaults)."""
    return {"tile": getattr(args, "tile", None),
            "tile_overlap": getattr(args, "tile_overlap", 8),
            "tile_blend": getattr(args, "tile_blend", "uniform")}


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_many, evaluate_spec
    from .fileio import save_json

    _check_evaluate_data(args)
    options = dict(quantize=not args.float_output, device=args.device,
                   model_config=_load_options(args), progress=not args.quiet,
                   save_images=args.save_images, image_suffix=args.image_suffix,
                   **evaluate_options(args))
    hr_data = {"hr": args.hr, "lr": args.lr, "filename_tmpl": args.filename_tmpl or "{}"}
    if args.dataset:
        datasets = {"main": hr_data, **args.dataset} if args.hr else args.dataset
        result = evaluate_many(args.model, datasets, args.scale, **options)
        for name, res in result["datasets"].items():
            print(f"{args.model} x{args.scale} on {name}: PSNR {res['psnr']:.3f} dB, "
                  f"SSIM {res['ssim']:.4f} ({len(res['per_image'])} images)")
    else:
        result = evaluate_spec(args.model, scale=args.scale, **hr_data, **options)
        _print_scores(args, result)
    if args.json:
        save_json(result, args.json)


def _check_evaluate_data(args: argparse.Namespace) -> None:
    """Refuse data options that would be ignored or would replace one another."""
    if not args.hr and not args.dataset:
        raise ValueError("give --hr (and optionally --lr) or one or more --dataset")
    if not args.hr and (args.lr or args.filename_tmpl):
        raise ValueError("--lr and --filename-tmpl describe the --hr data set, and no --hr is "
                         "given: add --hr, or give them in --dataset NAME=HR,LR,TMPL")
    if args.hr and "main" in (args.dataset or {}):
        raise ValueError(f"--hr {args.hr} is the data set 'main' next to --dataset, and "
                         f"--dataset main={args.dataset['main']['hr']} names it again: rename "
                         f"one of them")


def _print_scores(args: argparse.Namespace, result: dict) -> None:
    for row in result["per_image"]:
        print(f"  {row['name']:<28} PSNR {row['psnr']:7.3f} dB  SSIM {row['ssim']:.4f}")
    macs = "" if result["macs_full"] is None else (
        f"; params {result['params']:,}; MACs thop {result['macs_thop'] / 1e9:.3f} G, "
        f"full {result['macs_full'] / 1e9:.3f} G at LR {result['macs_lr_size']}")
    print(f"{args.model} x{args.scale} on {args.hr}: PSNR {result['psnr']:.3f} dB, "
          f"SSIM {result['ssim']:.4f} ({len(result['per_image'])} images){macs}")


def _model_config(text: str | None, option: str = "--model-config") -> dict:
    """Hyper-parameters given as a YAML/JSON mapping on the command line."""
    if not text:
        return {}
    try:
        value = json.loads(text)  # JSON first: YAML 1.1 reads 1e-06 as a string
    except json.JSONDecodeError:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{option} is not valid YAML ({str(err).splitlines()[0]}): "
                             f"{text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a mapping such as '{{heads: 4}}', got {text!r}")
    return value


def cmd_export_data(args: argparse.Namespace) -> None:
    from .data import export_embedded

    paths = export_embedded(args.split, args.out)
    print(f"wrote {len(paths)} images to {args.out}")


def cmd_score_units(args: argparse.Namespace) -> None:
    from .pruning.importance import OptinSettings
    from .pruning.search import save_artifact, score_units

    calibration = _calibration(args)
    settings = OptinSettings(tokens=args.tokens, lam=args.lam, seed=args.seed,
                             max_batch=args.max_batch, scorer=args.scorer, probes=args.probes)
    artifact = score_units(args.teacher, args.method, calibration, settings,
                           _load_options(args), args.device, part=_part(args.part),
                           units=args.units, progress=not args.quiet,
                           compensation=_compensation(args))
    save_artifact(artifact, args.out)
    scored = artifact.get("scores") or artifact.get("terms")
    print(f"scored {sum(len(s) for s in scored.values())} units of {len(scored)} groups with "
          f"{args.method}{f' (part {args.part})' if args.part else ''}; wrote {args.out}")


def _calibration(args: argparse.Namespace) -> Calibration:
    """The calibration crops that :func:`_calibration_args` describes."""
    from .pruning.calibration import Calibration

    return Calibration(hr=args.calib_hr, lr=args.calib_lr, filename_tmpl=args.filename_tmpl,
                       num_crops=args.num_crops, crop_size=args.crop_size, seed=args.seed)


def cmd_compensate(args: argparse.Namespace) -> None:
    from .pruning.compensate import compensate_checkpoint

    summary = compensate_checkpoint(args.teacher, args.model, args.out, _calibration(args),
                                    _compensation(args), _load_options(args),
                                    args.device, progress=not args.quiet)
    fit = summary["fit"].values()
    print(f"compensated {len(fit)} layers in {summary['seconds']:.1f} s; mean relative error "
          f"{_mean(f['before'] for f in fit):.4f} -> {_mean(f['after'] for f in fit):.4f}; "
          f"wrote {args.out}")


def _compensation(args: argparse.Namespace) -> "CompensationSettings":
    from .pruning.compensate import CompensationSettings

    return CompensationSettings(ridge=args.ridge, target=args.target, batch_size=args.batch_size)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _part(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--part must look like k/n (e.g. 0/4), got {text!r}") from None
    return k, n


def cmd_gather_scores(args: argparse.Namespace) -> None:
    from .pruning.search import gather_scores, save_artifact

    save_artifact(gather_scores(args.parts), args.out)
    print(f"joined {len(args.parts)} scoring jobs; wrote {args.out}")


def cmd_search_masks(args: argparse.Namespace) -> None:
    from .pruning.search import save_artifact, search_masks

    if args.compensated_out and args.selection != "compensated":
        raise ValueError(f"--compensated-out needs --selection compensated (the {args.selection} "
                         f"selection compensates nothing; run srprune compensate)")
    artifact = search_masks(args.teacher, args.scores, args.mac_constraint, args.selection,
                            args.min_keep, _load_options(args), _calibration(args),
                            args.device, _compensation(args), args.search_steps,
                            args.search_seed, args.compensated_out)
    save_artifact(artifact, args.out)
    kept, total = sum(artifact["kept"].values()), sum(len(m) for m in artifact["masks"].values())
    print(f"{artifact['method']}/{args.selection}: kept {kept} of {total} units; full MACs "
          f"{artifact['macs_pruned'] / 1e9:.3f} G of {artifact['macs_teacher'] / 1e9:.3f} G "
          f"(ratio {artifact['achieved_mac_ratio']:.4f}, prunable part "
          f"{artifact['prunable_mac_ratio']:.4f}, budget {args.mac_constraint}; "
          f"{len(artifact['candidates'])} candidates); wrote {args.out}"
          + (f" and {args.compensated_out}" if args.compensated_out else ""))


def cmd_export_zeroed(args: argparse.Namespace) -> None:
    from .pruning.search import export_zeroed

    export_zeroed(args.teacher, args.masks, args.out, _load_options(args))
    print(f"wrote {args.out}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from .finetune import finetune

    workdir = _workdir(args)
    config = _read_yaml(args.config) if args.config else {}
    config.update(_model_config(args.settings, "--settings"))
    summary = finetune(args.teacher, args.student, config, args.out, workdir,
                       _load_options(args), progress=not args.quiet,
                       fresh_on_change=args.fresh_on_change)
    _print_training(summary, args.out)


def cmd_rebuild(args: argparse.Namespace) -> None:
    from .complexity import count_params
    from .pruning.rebuild import rebuild

    small = rebuild(args.model, args.out)
    print(f"rebuilt {args.model}: {count_params(small)['total']:,} parameters; wrote {args.out}")


def cmd_export(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .export import export_model

    model = load_model(args.model, **_load_options(args))
    export_model(model, args.out, args.format, args.size)
    print(f"exported {args.model} as {args.format} to {args.out}")


def cmd_inspect(args: argparse.Namespace) -> None:
    from .sparsity import inspect_paths

    inspect_paths(args.paths, args.json, _load_options(args))


def cmd_compare(args: argparse.Namespace) -> None:
    from .compare import compare

    paths = compare(args.results, args.out, args.datasets, _layout(args), args.latency,
                    args.arch)
    print(f"wrote {paths['csv']}, {paths['markdown']}, {paths['kept_units']} and "
          f"{', '.join(str(p) for p in paths['psnr_vs_macs'].values())}")


def _compensation_args(p: argparse.ArgumentParser) -> None:
    from .pruning.compensate import TARGETS, CompensationSettings

    p.add_argument("--ridge", type=nonnegative_float, default=CompensationSettings().ridge,
                   help="compensation ridge, relative to the mean diagonal of X^T X")
    p.add_argument("--target", default=CompensationSettings().target, choices=TARGETS,
                   help="fit the teacher's layer output, or also its residual-stream drift")
    p.add_argument("--batch-size", type=positive_int, default=CompensationSettings().batch_size,
                   help="calibration crops per forward (bounds memory)")


def _layout(args: argparse.Namespace) -> dict[str, list[str]] | None:
    """``{method: [budgets]}`` of ``--methods``/``--budgets`` (None: the folders found)."""
    return {m: list(args.budgets) for m in args.methods} if args.methods and args.budgets else None


def cmd_visual(args: argparse.Namespace) -> None:
    from .data import load_pairs
    from .evaluate import load_net, model_upscaler
    from .figures import Crop, VisualInputs, visual_comparison

    if args.box is not None and args.image is None:
        raise ValueError("--box needs --image (the image the box is in)")
    tile = {"tile": args.tile, "tile_overlap": args.tile_overlap} if args.tile else {}

    def upscale(path: str | Path, lr: np.ndarray) -> np.ndarray:
        net = load_net(str(path), args.scale, args.device)
        return model_upscaler(net, next(net.parameters()).device, scale=args.scale, **tile)(lr)

    inputs = VisualInputs(list(load_pairs(args.hr, args.scale, args.lr, args.filename_tmpl)),
                          args.scale, upscale)
    crop = None if args.box is None else Crop(args.image, *args.box)
    record = visual_comparison(args.results, args.dataset, inputs, args.out, crop, args.image,
                               args.crop_size, _layout(args), args.arch)
    crop = record["crop"]
    scores = "; ".join(f"{title} {v['psnr']:.2f} dB" for title, v in record["panels"].items()
                       if v["psnr"] is not None)
    print(f"{args.dataset}: image {crop.image}, crop {crop.height}x{crop.width} at "
          f"({crop.top}, {crop.left}); {scores}; wrote {args.out}")


def cmd_plot_recovery(args: argparse.Namespace) -> None:
    from .figures import plot_recovery

    print(f"wrote {plot_recovery(args.results, args.out, _layout(args), args.arch)}")


def _labelled_model(text: str) -> tuple[str, str]:
    """``LABEL=PATH`` (or a bare ``PATH``, labelled by itself); argparse ``type=``."""
    label, sep, path = text.partition("=")
    if not sep:
        label, path = text, text
    if not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    return label, path


def cmd_time_models(args: argparse.Namespace) -> None:
    from .fileio import save_json
    from .latency import time_models

    models, onnx = dict(args.model or []), dict(args.onnx or [])
    for option, given, unique in (("--model", args.model, models), ("--onnx", args.onnx, onnx)):
        if len(unique) != len(given or []):
            raise ValueError(f"{option}: every label must be different")
    result = time_models(args.teacher, models, lr_size=args.size, rounds=args.rounds,
                         warmup=args.warmup, threads=args.threads, device=args.device,
                         seed=args.seed, model_config=_load_options(args), onnx=onnx)
    machine = result["machine"]
    print(f"{result['rounds']} interleaved rounds at LR {result['lr_size'][0]}x"
          f"{result['lr_size'][1]}, {machine['threads']} threads, {machine['device_name']} "
          f"({machine['cpu_capability']}), torch {machine['torch']}")
    for row in result["models"]:
        print(f"  {row['label']:<24} {row['backend']:<11} median {row['median_ms']:9.2f} ms "
              f"(IQR {row['q1_ms']:.2f}-{row['q3_ms']:.2f})  speed-up {row['speedup']:.3f}x")
    if args.json:
        save_json(result, args.json)


def _calibration_args(p: argparse.ArgumentParser, seed_help: str, scoring: bool = False) -> None:
    """Options of the calibration crops (training images, never a test set); ``scoring``: the
    smaller default crops of OPTIN scoring."""
    from .pruning.calibration import SCORE_CROP_SIZE, SCORE_CROPS, Calibration

    p.add_argument("--calib-hr", default=Calibration.hr,
                   help="training images for calibration crops (folder or embedded:train)")
    p.add_argument("--calib-lr", help="their LR folder (default: bicubic-downscale the HR)")
    p.add_argument("--filename-tmpl", default=Calibration.filename_tmpl, type=filename_template,
                   help="LR name template, e.g. '{}x2'")
    p.add_argument("--num-crops", type=positive_int,
                   default=SCORE_CROPS if scoring else Calibration.num_crops,
                   help="calibration LR crops")
    p.add_argument("--crop-size", type=positive_int,
                   default=SCORE_CROP_SIZE if scoring else Calibration.crop_size,
                   help="side of each LR crop")
    p.add_argument("--seed", type=int, default=Calibration.seed, help=seed_help)


def _layout_args(p: argparse.ArgumentParser) -> None:
    """``--results`` and the ``--methods``/``--budgets`` to read from it (see :func:`_layout`)."""
    p.add_argument("--results", required=True, help="results/<run> folder of the workflow")
    p.add_argument("--methods", nargs="+", action=UniqueNames,
                   help="default: the method folders found")
    p.add_argument("--budgets", nargs="+", action=UniqueNames,
                   help="default: the budget folders found")


def _artifact_arch_arg(p: argparse.ArgumentParser) -> None:
    """``--arch``: the architecture that names a run's artifacts (``<arch>_rebuilt.pth``)."""
    p.add_argument("--arch", default=DEFAULT_ARCH,
                   help="architecture naming the artifacts, <arch>_rebuilt.pth (default "
                        f"{DEFAULT_ARCH})")


def _teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="the trained model (checkpoint)")
    _model_args(p)


def _model_args(p: argparse.ArgumentParser) -> None:
    """``--arch`` and ``--model-config``: what a checkpoint that does not describe itself lacks."""
    from .models import ARCHS

    p.add_argument("--arch", choices=sorted(ARCHS),
                   help=f"architecture of the checkpoint (default: the one a self-describing "
                        f"srprune checkpoint names, else {DEFAULT_ARCH})")
    p.add_argument("--model-config", help="hyper-parameters a BasicSR checkpoint cannot tell, "
                                          "as YAML, e.g. '{heads: 4}'")


def _load_options(args: argparse.Namespace) -> dict:
    """``--arch`` and ``--model-config`` as keyword arguments of :func:`srprune.load_model`."""
    options = _model_config(args.model_config)
    return {**options, "arch": args.arch} if args.arch else options


def build_parser() -> argparse.ArgumentParser:
    """The ``srprune`` parser with one subcommand per stage."""
    from .figures import DEFAULT_CROP
    from .pruning.adapter import UNIT_KINDS_DEFAULT
    from .pruning.importance import OptinSettings
    from .pruning.methods import DEFAULT_METHOD, METHOD_CLASSES, SCORERS
    from .pruning.selection import DEFAULT_STEPS

    parser = Parser(prog="srprune", description=__doc__)
    _verbosity_args(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a YAML config (L1 loss, Adam, resume)")
    p.add_argument("--config", required=True, help="training config (see config/demo_teacher.yaml)")
    _training_args(p, "output checkpoint (.pth)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="PSNR/SSIM (Y channel), params and MACs of a model")
    p.add_argument("--model", required=True, help="checkpoint path, or 'bicubic' for the baseline")
    p.add_argument("--hr", help="HR folder (dataroot_gt), or embedded:train|val")
    p.add_argument("--lr", help="LR folder (dataroot_lq); default: bicubic-downscale the HR images")
    p.add_argument("--scale", type=int, required=True, choices=(1, 2, 3, 4))
    p.add_argument("--filename-tmpl", type=filename_template,
                   help="LR name template of --lr, e.g. '{}x4' (default '{}')")
    p.add_argument("--json", type=output_file, help="write the results as JSON to this file")
    p.add_argument("--float-output", action="store_true",
                   help="score the float output instead of rounding it to uint8 first")
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:1 or auto")
    _model_args(p)
    p.add_argument("--save-images", type=output_folder, metavar="DIR",
                   help="also write every scored SR output (uint8, whole image) as "
                        "DIR/<name>_<suffix>.png (with --dataset: DIR/<dataset>/...)")
    p.add_argument("--image-suffix", metavar="SUFFIX",
                   help="suffix of the saved images (default: the model file's stem, or bicubic)")
    add_evaluate_options(p, datasets=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score-units", help="score every head and FFN neuron (obs, OPTIN or a "
                                           "baseline)")
    _teacher_args(p)
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHOD_CLASSES,
                   help="; ".join(f"{name}: {cls.summary}" for name, cls in METHOD_CLASSES.items()))
    p.add_argument("--out", type=output_file, required=True, help="unit-scores artifact (.pth)")
    _calibration_args(p, "calibration crops, token positions, random scores", scoring=True)
    p.add_argument("--tokens", type=positive_int, default=OptinSettings.tokens,
                   help="token positions K per Gram matrix")
    p.add_argument("--lam", type=nonnegative_float, default=OptinSettings.lam,
                   help="weight of the output term against the trajectory term")
    p.add_argument("--max-batch", type=positive_int, default=OptinSettings.max_batch,
                   help="images per masked forward (variants x crops); bounds memory")
    p.add_argument("--scorer", default=OptinSettings.scorer, choices=SCORERS,
                   help="OPTIN terms: exact (one masked forward per unit), sketch (random-probe "
                        "estimate of their second-order values, far fewer passes) or hybrid "
                        "(exact for heads, sketch for the other units)")
    p.add_argument("--probes", type=positive_int, default=OptinSettings.probes,
                   help="random probes of the sketch scorer")
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:N")
    p.add_argument("--part", help="k/n: score only the blocks i with i %% n == k (job k of n); "
                                  "join the n parts with gather-scores")
    p.add_argument("--units", default=",".join(UNIT_KINDS_DEFAULT),
                   help="unit kinds to score and prune, comma-separated: head, qk_channel, "
                        "v_channel (channels inside heads; need head), neuron")
    _compensation_args(p)
    p.set_defaults(func=cmd_score_units)

    p = sub.add_parser("gather-scores", help="join the unit scores of parallel scoring jobs")
    p.add_argument("parts", nargs="+", metavar="PART", help="score-units --part outputs")
    p.add_argument("--out", type=output_file, required=True, help="the joined unit-scores artifact")
    p.set_defaults(func=cmd_gather_scores)

    p = sub.add_parser("search-masks", help="choose units to keep under a MAC budget")
    _teacher_args(p)
    p.add_argument("--scores", required=True, help="unit-scores artifact from score-units")
    p.add_argument("--mac-constraint", type=finite_float, required=True,
                   help="r in (0, 1]: pruned full MACs at most r times the teacher's")
    p.add_argument("--selection", default=DEFAULT_SELECTION, choices=SELECTIONS,
                   help="measured: knapsack candidates, the least distorting on calibration crops "
                        "kept; compensated: the same, each candidate compensated first (with the "
                        "options below); knapsack: the alpha = 1 candidate, unmeasured")
    p.add_argument("--min-keep", type=int_at_least(0), default=0,
                   help="units always kept per group")
    p.add_argument("--search-steps", type=int_at_least(0), default=DEFAULT_STEPS,
                   help="local moves of the per-module weights after the head-weight sweep, each "
                        "a measured candidate (measured and compensated selections)")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the local moves")
    _calibration_args(p, "calibration crops (candidates are measured on them)")
    _compensation_args(p)
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:N")
    p.add_argument("--out", type=output_file, required=True,
                   help="masks artifact (<arch>_pruning_masks.pth)")
    p.add_argument("--compensated-out", type=output_file, metavar="PATH",
                   help="also write the chosen masks' compensated model (<arch>_compensated.pth, "
                        "what srprune compensate makes of the zeroed export); compensated "
                        "selection only")
    p.set_defaults(func=cmd_search_masks)

    p = sub.add_parser("export-zeroed", help="the teacher with masked units' weights zeroed")
    _teacher_args(p)
    p.add_argument("--masks", required=True, help="masks artifact from search-masks")
    p.add_argument("--out", type=output_file, required=True,
                   help="zeroed checkpoint (<arch>_zeroed.pth)")
    p.set_defaults(func=cmd_export_zeroed)

    p = sub.add_parser("compensate", help="refit what the kept units feed (least squares), "
                                          "no training")
    _teacher_args(p)
    p.add_argument("--model", required=True, help="zeroed model from export-zeroed")
    p.add_argument("--out", type=output_file, required=True, help="<arch>_compensated.pth")
    _calibration_args(p, "calibration crops")
    _compensation_args(p)
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_compensate)

    p = sub.add_parser("finetune", help="recover a zeroed model by feature KD, masks held fixed")
    _teacher_args(p)
    p.add_argument("--student", required=True, help="zeroed model from export-zeroed")
    p.add_argument("--config", help="YAML with train/loss/data/device sections "
                                    "(see config/config.yaml, finetune)")
    p.add_argument("--settings", help="the same as inline YAML/JSON; overrides --config sections")
    _training_args(p, "<arch>_finetuned.pth")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("rebuild", help="physically smaller model from a masked checkpoint")
    p.add_argument("--model", required=True, help="fine-tuned (or zeroed) model with its masks")
    p.add_argument("--out", type=output_file, required=True, help="<arch>_rebuilt.pth")
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("export", help="ONNX (dynamic sizes) or TorchScript (one size) for deployment")
    p.add_argument("model", metavar="MODEL", help="any model file srprune.load_model reads")
    p.add_argument("out", type=output_file, metavar="OUT", help="file to write (.onnx, .ts)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--size", type=height_by_width, default=(64, 64),
                   help="LR HxW traced (default 64x64); the only size a TorchScript file runs")
    _model_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("inspect", help="zeros per tensor, zero heads/neurons per module")
    p.add_argument("paths", nargs="+", metavar="PATH", help="checkpoints (srprune, BasicSR, plain)")
    p.add_argument("--json", type=output_file, help="write every report to this JSON file")
    _model_args(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("compare", help="comparison CSV, Markdown and plots of a results folder")
    _layout_args(p)
    _artifact_arch_arg(p)
    p.add_argument("--out", type=output_folder, required=True,
                   help="folder for comparison.csv/.md and the plots")
    p.add_argument("--datasets", nargs="+", action=UniqueNames,
                   help="default: every evaluated data set")
    p.add_argument("--latency", help="srprune time-models JSON (default: <results>/latency.json "
                                     "when present)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("visual", help="SR crops of HR, bicubic, teacher and every rebuilt "
                                      "model side by side, with crop PSNR and MAC ratio")
    _layout_args(p)
    _artifact_arch_arg(p)
    p.add_argument("--dataset", required=True, help="data set name (eval/teacher_<name>.json)")
    p.add_argument("--hr", required=True, help="its HR folder, or embedded:train|val")
    p.add_argument("--lr", help="its LR folder (default: bicubic-downscale the HR images)")
    p.add_argument("--filename-tmpl", default="{}", type=filename_template,
                   help="LR name template, e.g. '{}x4'")
    p.add_argument("--scale", type=int, required=True, choices=(1, 2, 3, 4))
    p.add_argument("--image", help="image to show (default: the one holding the chosen crop)")
    p.add_argument("--box", type=crop_box, metavar="TOP,LEFT,HEIGHT,WIDTH",
                   help="crop in HR pixels (needs --image; default: the window where the "
                        "teacher most improves on bicubic)")
    p.add_argument("--crop-size", type=positive_int, default=DEFAULT_CROP,
                   help="side of the chosen crop in HR pixels")
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--tile", type=positive_int, help="run the models on LR tiles of this side")
    p.add_argument("--tile-overlap", type=int_at_least(0), default=8, help="overlap of tiles")
    p.add_argument("--out", type=output_file, required=True,
                   help="the figure (visual_<dataset>.png)")
    p.set_defaults(func=cmd_visual)

    p = sub.add_parser("plot-recovery", help="validation PSNR against fine-tuning iteration")
    _layout_args(p)
    _artifact_arch_arg(p)
    p.add_argument("--out", type=output_file, required=True,
                   help="the plot (finetune_recovery.png)")
    p.set_defaults(func=cmd_plot_recovery)

    p = sub.add_parser("time-models", help="latency of the teacher and pruned models, side by "
                                           "side in interleaved rounds")
    _teacher_args(p)
    p.add_argument("--model", action="append", type=_labelled_model, metavar="LABEL=PATH",
                   help="a model to time against the teacher (repeatable)")
    p.add_argument("--onnx", action="append", type=_labelled_model, metavar="LABEL=PATH",
                   help="an exported .onnx file to time with ONNX Runtime in the same rounds "
                        "(repeatable; CPU)")
    p.add_argument("--size", type=lr_size, default=None, metavar="HxW",
                   help="LR input size, e.g. 90x160, or reference (output 1280x720; default)")
    p.add_argument("--rounds", type=positive_int, default=20, help="timed rounds")
    p.add_argument("--warmup", type=int_at_least(0), default=2, help="untimed rounds first")
    p.add_argument("--threads", type=positive_int,
                   help="torch intra-op threads (default: torch's current count)")
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input")
    p.add_argument("--json", type=output_file,
                   help="write the timings and the machine facts to this JSON file")
    p.set_defaults(func=cmd_time_models)

    p = sub.add_parser("export-data", help="write the embedded scikit-image images as PNG files")
    p.add_argument("--split", required=True, choices=("train", "val"))
    p.add_argument("--out", type=output_folder, required=True, help="folder to write into")
    p.set_defaults(func=cmd_export_data)
    for command in sub.choices.values():
        _verbosity_args(command)
    return parser


def _verbosity_args(p: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``-v/--verbose``, accepted before and after the subcommand."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="warnings and errors only, no progress bars (results still printed)")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug messages")


def _set_verbosity(args: argparse.Namespace) -> None:
    """Logging for ``--quiet`` (warnings), default (info) or ``--verbose`` (srprune's debug
    messages; other libraries stay at info); sets ``args.quiet`` for the commands."""
    args.quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    if args.quiet and verbose:
        raise SystemExit("error: --quiet and --verbose exclude each other")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING if args.quiet else logging.INFO)
    log.setLevel(logging.DEBUG if verbose else logging.NOTSET)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _set_verbosity(args)
    log.debug("srprune %s with %s", args.command,
              {k: v for k, v in vars(args).items() if k not in ("func", "command")})
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (CheckpointError, DataError, ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
