"""Merging unlearning runs of one base model (method.md, "Model composition").

* :func:`compose`: each state-dict key taken whole from one run, by fnmatch patterns (first
  match wins, every key covered); :func:`split_rules` gives the backbone/head split found from
  the architecture's classifier head.
* :func:`task_arithmetic`: theta_0 + sum_i s_i (theta_i - theta_0), per-pattern overrides.
* :func:`reestimate_batchnorm`: BatchNorm statistics recomputed on retain data.
* :func:`search_strengths`: strengths per run from a small grid, scored like a sweep.
* :func:`merge_runs`: all of it on run folders, with an optional retain fine-tune; the result
  is saved like a run (:func:`revise.unlearn.api.save_run`).
"""

from revise.merge._merge import merge_runs
from revise.merge._runs import RunInput, check_aligned, load_run
from revise.merge.arithmetic import task_arithmetic
from revise.merge.compose import compose, split_rules
from revise.merge.search import DEFAULT_GRID, StrengthSearch, search_strengths
from revise.unlearn.batchnorm import reestimate_batchnorm

__all__ = [
    "DEFAULT_GRID",
    "RunInput",
    "StrengthSearch",
    "check_aligned",
    "compose",
    "load_run",
    "merge_runs",
    "reestimate_batchnorm",
    "search_strengths",
    "split_rules",
    "task_arithmetic",
]
