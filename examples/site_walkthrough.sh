#!/usr/bin/env bash
# Run: bash examples/site_walkthrough.sh [WORKDIR]
# The revision path step by step with the CLI, on the demo site that `revise demo` builds:
# index the DICOM folder, check the selection, unlearn the retiring device, evaluate, export a
# bundle, validate it against acceptance criteria (the report goes into the bundle), sign it.
set -euo pipefail
work="${1:-revise-walkthrough}"
revise demo -o "$work/demo" >/dev/null          # builds the site and the deployed model
site="$work/demo/site"
forget='device == "Borealis CR-7"'
revise index "$site/dicom" -o "$work/manifest.parquet" --labels "$site/labels.csv" --site demo \
  --overwrite
revise select "$work/manifest.parquet" "$forget"
revise unlearn --model "$work/demo/original" --data "$work/manifest.parquet" --forget "$forget" \
  --method psg --set lr=0.001 --set phi=2 --set epochs=10 --set freeze_bn=true \
  --cache "$work/cache" -o "$work/run" --overwrite
revise evaluate --model "$work/run" --data "$work/manifest.parquet" --forget "$forget" \
  --cache "$work/cache" --json "$work/metrics.json" --overwrite
revise export "$work/run" -o "$work/bundle" --data "$work/manifest.parquet" --cache "$work/cache" \
  --int8 --overwrite  # model.int8.onnx too, calibrated on retain rows (the run's forget selection)
# Validate the bundle (its model.onnx is checked for parity) against the acceptance criteria the
# demo wrote before its run; exit 1 if a gate fails, and then signing below refuses
revise validate "$work/bundle" --original "$work/demo/original" --data "$work/manifest.parquet" \
  --forget "$forget" --criteria "$work/demo/gates.yaml" --reference "$work/demo/retrained" \
  --cache "$work/cache" -o "$work/validation" --overwrite
revise keygen -o "$work/keys" --overwrite
revise sign "$work/bundle" --key "$work/keys/revise-signing.key"
revise verify "$work/bundle" --pub "$work/keys/revise-signing.pub"
echo "report: $work/validation/report.html; signed bundle: $work/bundle"
