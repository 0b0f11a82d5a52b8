"""The results layout: every file and stage name of a run under ``results/<run>/``, in one place.

The Snakefile (which loads this file by path, so it needs neither torch nor an installed
package), :mod:`srprune.compare` and :mod:`srprune.figures` all name paths through
:class:`RunPaths`. Its methods take plain strings, so a rule passes wildcards (``"{method}"``)
where a reader passes values (``"optin"``). This module imports nothing from srprune.

Per method and budget, ``<method>/<budget>/`` holds the masks, one checkpoint per model stage
(``<arch>_<stage>.pth``), one evaluation per stage and data set (``eval_<stage>_<dataset>.json``),
``sparsity.json``, the fine-tuning work folder and the exported files; per method
``<method>/unit_scores.pth``; ``eval/<who>_<dataset>.json`` and ``images/<who>_<dataset>/`` for
the teacher and the baselines; the run-wide files at the top.
"""
from __future__ import annotations

from dataclasses import dataclass

ZEROED, COMPENSATED, FINETUNED, REBUILT = "zeroed", "compensated", "finetuned", "rebuilt"
MODEL_STAGES = (ZEROED, COMPENSATED, FINETUNED, REBUILT)  # <arch>_<stage>.pth, in pipeline order
DENSE_STAGES = (ZEROED, COMPENSATED, FINETUNED)  # the teacher's shapes, removed units zero
TEACHER = "teacher"
MASKS = "pruning_masks"  # <arch>_pruning_masks.pth
NOT_METHODS = ("eval", "images", "logs", "benchmarks")  # top-level folders that are no method
EXPORT_SUFFIXES = {"onnx": "onnx", "torchscript": "ts"}  # export format -> file suffix


def latency_label(method: str, budget: str) -> str:
    """The ``latency.json`` label of a budget's rebuilt model."""
    return f"{method}/{budget}"


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run: ``root`` is ``results/<run>``, ``arch`` names the checkpoints."""

    root: str
    arch: str

    # ------------------------------------------------------------------ per method and budget
    def budget_dir(self, method: str, budget: str) -> str:
        return f"{self.root}/{method}/{budget}"

    def model(self, method: str, budget: str, stage: str) -> str:
        """A stage's checkpoint (``stage`` one of :data:`MODEL_STAGES`) or the masks."""
        return f"{self.budget_dir(method, budget)}/{self.arch}_{stage}.pth"

    def masks(self, method: str, budget: str) -> str:
        return self.model(method, budget, MASKS)

    def stage_eval(self, method: str, budget: str, stage: str, dataset: str) -> str:
        return f"{self.budget_dir(method, budget)}/eval_{stage}_{dataset}.json"

    def sparsity(self, method: str, budget: str) -> str:
        return f"{self.budget_dir(method, budget)}/sparsity.json"

    def finetune_workdir(self, method: str, budget: str) -> str:
        """The fine-tuning job's own folder (resume state, checkpoints, its running log)."""
        return f"{self.budget_dir(method, budget)}/finetune_work"

    def finetune_log(self, method: str, budget: str) -> str:
        """The finished fine-tuning's log (``iter``, ``val_psnr``, ...): the recovery plot's input."""
        return f"{self.budget_dir(method, budget)}/finetune_log.csv"

    def exported(self, method: str, budget: str, suffix: str) -> str:
        """The rebuilt model exported as ``.onnx`` or ``.ts`` (:data:`EXPORT_SUFFIXES`)."""
        return f"{self.budget_dir(method, budget)}/{self.arch}_{REBUILT}.{suffix}"

    # ------------------------------------------------------------------ per method
    def scores(self, method: str) -> str:
        return f"{self.root}/{method}/unit_scores.pth"

    def score_part(self, method: str, part: str, parts: int) -> str:
        """Scoring job ``part`` of ``parts`` (joined into :meth:`scores`)."""
        return f"{self.root}/{method}/unit_scores.part{part}of{parts}.pth"

    # ------------------------------------------------------------------ teacher and baselines
    def reference_eval(self, who: str, dataset: str) -> str:
        """The evaluation of the teacher or a baseline (``who``) on ``dataset``."""
        return f"{self.root}/eval/{who}_{dataset}.json"

    def reference_images(self, who: str, dataset: str) -> str:
        """The folder of its saved SR outputs (``<image>_<who>.png``)."""
        return f"{self.root}/images/{who}_{dataset}"

    # ------------------------------------------------------------------ the whole run
    @property
    def latency(self) -> str:
        return f"{self.root}/latency.json"

    @property
    def comparison_csv(self) -> str:
        return f"{self.root}/comparison.csv"

    @property
    def comparison_md(self) -> str:
        return f"{self.root}/comparison.md"

    @property
    def kept_units(self) -> str:
        return f"{self.root}/kept_units.png"

    def psnr_vs_macs(self, dataset: str) -> str:
        return f"{self.root}/psnr_vs_macs_{dataset}.png"

    def visual(self, dataset: str) -> str:
        return f"{self.root}/visual_{dataset}.png"

    @property
    def recovery(self) -> str:
        return f"{self.root}/finetune_recovery.png"

    def log(self, name: str) -> str:
        """The log file of one job (``name``: the rule and its wildcards)."""
        return f"{self.root}/logs/{name}.log"

    def benchmark(self, name: str) -> str:
        """Snakemake's ``benchmark:`` file of one job (wall time, memory)."""
        return f"{self.root}/benchmarks/{name}.tsv"
