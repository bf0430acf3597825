"""`revise run recipe.yaml`: the whole revision - index, unlearn, merge, export, validate, sign -
from one file, checked as a whole before anything runs, and resumable.

```yaml
workdir: work                    # every output; relative paths are relative to the recipe
model: deployed/                 # the deployed model (card:, arch: for bare weights)
data: {images: site/dicom, labels: site/labels.csv, site: north}  # or {manifest: m.parquet}
forget: 'device == "Borealis CR-7"'
unlearn:
  - {method: psg, settings: {lr: 0.001, phi: 2}}
  - {name: ft, method: finetune, settings: {epochs: 2}}
merge: {search_strengths: true}  # any `revise merge` option; runs are named by `name`
compile: false                   # torch.compile the unlearning runs (revise unlearn --compile)
export: {name: digits, fp16: false}
validate: {criteria: gates.yaml, reference: retrained/}            # any `revise validate` option
sign: {key: keys/revise-signing.key, password_env: REVISE_KEY_PASSWORD}
```

Checked before anything runs, every problem reported in one numbered message (exit 2): the
recipe's keys and values, and its inputs opened as their stages will open them - the device,
the deployed and reference models loaded, the manifest read and the forget selection applied
to it (every ``@file`` read), a held-out manifest, the merge criteria, the signing key opened
with its password - so that nothing fails hours later. Run and bundle names are letters,
digits, '-' and '_' only (folder names inside the workdir).

Each stage calls the library function that the CLI command of the same name calls
(:mod:`revise.stages`), so a recipe does exactly what the commands do; each stage's equivalent
command line is shown, recorded and pasteable. A stage whose output exists and whose fingerprint
(its arguments, the fingerprints of the stages it reads, the digests of its input files and
folders) is unchanged is skipped; an unlearning run interrupted mid-way continues from its
checkpoint. The resolved recipe (absolute paths, every hyperparameter) is stored in the bundle;
its selections are stored as `revise.data.select.describe` writes them (values given for
``patient`` hidden).

Input digests: every path a stage reads from outside the workdir - the deployed model, the
manifest, the image folder and labels, the card, the reference model, the criteria, the held-out
source, the signing key and every ``@file`` named in a selection - goes into the fingerprint. A
file is hashed by content (sha256). A folder is walked in sorted order and each entry adds its
relative path, size and modification time (ns): cheap for an image folder of 100,000 DICOM files,
and a file rewritten in place changes its mtime; a touched file re-runs the stage, which errs on
the safe side. ``@file`` lists of patients are hashed with the site's PHI key (HMAC), like the
selections that name patients, so the state file holds no unkeyed hash of a patient ID.
"""

from revise.recipe.model import Plan, Stage, StageCall
from revise.recipe.plan import load_plan
from revise.recipe.run import run_plan
from revise.recipe.selection import shown_args, shown_selection

__all__ = [
    "Plan",
    "Stage",
    "StageCall",
    "load_plan",
    "run_plan",
    "shown_args",
    "shown_selection",
]
