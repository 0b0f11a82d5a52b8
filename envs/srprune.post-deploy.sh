#!/usr/bin/env bash
# Runs once in the new conda environment (snakemake --use-conda), in the workflow's working
# directory: the repository root, where pyproject.toml is. torch is pinned first so that pip
# takes the CPU wheel (see the README).
set -euo pipefail
[ -f pyproject.toml ] || { echo "srprune env: run snakemake from the srprune repository root" >&2; exit 1; }
pip install torch==2.13.0
pip install -e .
