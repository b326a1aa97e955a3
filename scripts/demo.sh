#!/usr/bin/env bash
# The whole path on the shipped data: train -> evaluate -> predict -> md.
# Usage: make demo   (or: DEMO_DIR=out bash scripts/demo.sh with nnp on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
NNP=${NNP:-nnp}
OUT=${DEMO_DIR:-demo-output}
EPOCHS=${DEMO_EPOCHS:-40}
MAX_TIME=${DEMO_MAX_TIME:-00:00:03:30}
MD_STEPS=${DEMO_MD_STEPS:-2000}
mkdir -p "$OUT"
start=$(date +%s)

echo "== 1/4 train: ANI on datasets/chno-mini.h5 (${EPOCHS} epochs or ${MAX_TIME}, whichever first)"
"$NNP" train data=demo model=ani trainer=cpu trainer.max_epochs="$EPOCHS" trainer.max_time="$MAX_TIME" \
    hydra.run.dir="$OUT/run" overwrite=true

echo "== 2/4 evaluate on the held-out test split"
"$NNP" evaluate ckpt="$OUT/run/model.pt" split=test output="$OUT/report.json" overwrite=true

echo "== 3/4 predict energies and forces of datasets/molecules.extxyz"
"$NNP" predict ckpt="$OUT/run/model.pt" input=datasets/molecules.extxyz output="$OUT/predicted.extxyz" overwrite=true

# phenol is among the demo's training molecules; the small demo model has not seen aspirin
echo "== 4/4 md: NVE phenol, ${MD_STEPS} steps of 0.5 fs from 300 K"
"$NNP" md ckpt="$OUT/run/model.pt" input=datasets/molecules.extxyz index=1 md.ensemble=nve md.steps="$MD_STEPS" \
    md.timestep_fs=0.5 md.temperature_K=300 output="$OUT/md.extxyz" overwrite=true

echo
echo "demo finished in $(( $(date +%s) - start )) s. Outputs in $OUT/:"
echo "  run/model.pt              deployable model (also run/checkpoints, run/csv, run/tensorboard, run/split.npz)"
echo "  report.json, report.png   test-split errors and parity plot"
echo "  predicted.extxyz          predicted energies and forces"
echo "  md.extxyz, md.csv, md.json  trajectory, energy log, drift summary"
