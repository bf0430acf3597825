"""Run: python examples/python_api.py [WORKDIR]

The revision path from Python, with the same library functions the CLI uses: build the demo
site, index it, train a stand-in deployed model, write the acceptance criteria, forget one device
with the automatic revision (aiming under the criteria's ceiling), evaluate, export, validate on
the held-out rows it did not calibrate on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from revise.data.demo_site import build_demo_site
from revise.data.index import index
from revise.data.sets import DecodedSet, split_calibration
from revise.data.tensors import prepare
from revise.export.onnx import export_onnx
from revise.models.architectures import build
from revise.models.pixel import normalize
from revise.stages.demo import demo_card
from revise.unlearn.api import save_run
from revise.unlearn.evaluate import evaluate
from revise.unlearn.pipeline import run_unlearning
from revise.unlearn.train import TrainConfig, train_classifier
from revise.validate.aims import forget_ceiling
from revise.validate.api import validate, write_report
from revise.validate.criteria import parse_criteria

work = Path(sys.argv[1] if len(sys.argv) > 1 else "revise-api-example")
site = build_demo_site(work / "site")
manifest = index(site.root / "dicom", labels=site.labels_csv).manifest
card = demo_card()
data = prepare(manifest, card, 'device == "Borealis CR-7"', cache_dir=work / "cache")

forget, retain = data.sets["forget"], data.sets["retain"]
everything = DecodedSet(torch.cat([forget.x, retain.x]), torch.cat([forget.y, retain.y]))
torch.manual_seed(0)  # the deployed model's initial weights: the same every run
deployed = train_classifier(build(card), card, everything, TrainConfig(epochs=20, lr=0.05))

# Acceptance criteria, written before the run: the automatic revision aims under the first.
criteria = parse_criteria(
    """
gates:
  - {metric: accuracy, set: heldout_forget, at_most: 0.5}
  - {metric: accuracy, set: heldout_retain, per: device, at_least: original - 0.05}
  - {metric: parity_label_agreement, at_least: 1.0}
"""
)
result = run_unlearning(
    deployed, card, data, method="auto", forget_ceiling=forget_ceiling(criteria)
)  # no settings: it chooses the method and its strength, and records why
save_run(result, work / "run", overwrite=True)
print(f"auto chose {result.record.chosen}; {result.record.warning or 'no warning'}")
judged, _ = split_calibration(data, result.record.calibration.fraction)  # never judge those
before = evaluate(deployed, card, judged.sets)
for name, after in result.record.metrics.items():
    print(f"{name:<16} accuracy {before[name]['accuracy']:.3f} -> {after['accuracy']:.3f}")

heldout = normalize(data.sets["heldout_retain"].x[:128], card)
exported = export_onnx(result.model, card, work / "run" / "model.onnx", samples=heldout)
print(f"ONNX parity: max |diff| {exported.parity.max_abs_diff:.1e}")

# Validate against the criteria on the rows the revision did not calibrate on; the report files
# go to work/report.
models = {"candidate": result.model, "original": deployed}
validation = validate(models, judged, criteria, card=card, onnx_path=work / "run" / "model.onnx")
write_report(validation, work / "report", overwrite=True)
for verdict in validation.verdicts:
    print("PASS" if verdict.passed else "FAIL", verdict.gate.name, verdict.message())
