"""Hyperparameter bounds and sweep sizes: values outside what a method can use, and grids too
large to run, are refused at once.

Probes kept (what a careless user tried, and what revise must do):
* `revise unlearn --set eps=2` (psg's eps is a fraction of the pixel range, in [0, 1]): exit 2
  before any work, one line naming the method, the field, the bound and the value; the same
  for every numeric hyperparameter of every registered method just outside each end of its
  bound, for a non-finite value and for a choice that is not one (one test over the registry:
  a new method is tested by registering it, and must declare a bound on each field);
* a config built in Python with an out-of-bound value handed straight to ``unlearn``: refused
  the same way (the check is the library's, not only the command line's);
* `revise sweep --grid lr=<3,000 values> --grid eps=<3,000 values>` (9 million points): exit 2
  at once, naming the size and the cap, without building the grid to count it;
* `revise sweep --grid eps=0.1,2`: the bad grid value is refused before any run;
* `revise merge --search-strengths` with a strength grid of 65 values for two runs (4,225
  candidates) or with ``nan`` in it: exit 2 before any image is decoded.
"""

from __future__ import annotations

import math
import shutil
import typing

import pytest
from pydantic.fields import FieldInfo

import revise.unlearn.sweep
import revise.unlearn.sweep_grid
from revise._schema import interval
from revise.errors import UsageError
from revise.unlearn.api import make_config, unlearn
from revise.unlearn.base import METHODS


def _fields(method: str) -> dict[str, FieldInfo]:
    return METHODS.get(method).config_type.__pydantic_fields__


def _bound(f: FieldInfo):  # a revise._schema.Interval, when declared
    return interval(f.metadata)


def _choices(f: FieldInfo) -> tuple:
    return (
        typing.get_args(f.annotation) if typing.get_origin(f.annotation) is typing.Literal else ()
    )


def _numeric(f: FieldInfo) -> bool:
    return isinstance(f.default, int | float) and not isinstance(f.default, bool)


def _outside(bound, whole: bool) -> list[float]:
    """Values just outside each finite end of ``bound``."""
    step = 1 if whole else 0.5
    out = []
    if math.isfinite(bound.low):
        out.append(bound.low if bound.low_open else bound.low - step)
    if math.isfinite(bound.high):
        out.append(bound.high if bound.high_open else bound.high + step)
    return [int(v) for v in out] if whole else out


CASES = [
    (method, name, value)
    for method in METHODS.names()
    for name, f in _fields(method).items()
    if _numeric(f) and _bound(f) is not None
    for value in _outside(_bound(f), isinstance(f.default, int))
]


@pytest.mark.parametrize("method", METHODS.names())
def test_every_hyperparameter_declares_its_bound_and_the_defaults_keep_to_it(method):
    undeclared = [
        name
        for name, f in _fields(method).items()
        if not isinstance(f.default, bool) and _bound(f) is None and not _choices(f)
    ]
    assert not undeclared, f"{method}: no bound declared for {undeclared}"
    make_config(method)  # the defaults are inside their bounds


@pytest.mark.parametrize(("method", "name", "value"), CASES)
def test_a_value_just_outside_a_bound_is_refused_naming_field_bound_and_value(method, name, value):
    bound = _bound(_fields(method)[name])
    with pytest.raises(UsageError) as caught:
        make_config(method, {name: value})
    message = str(caught.value)
    assert f"{method}: {name} must be {bound}" in message, message
    assert f"not {value!r}" in message, message


@pytest.mark.parametrize("method", METHODS.names())
def test_non_finite_numbers_and_unknown_choices_are_refused(method):
    for name, f in _fields(method).items():
        if _numeric(f) and isinstance(f.default, float):
            with pytest.raises(UsageError, match=rf"{method}: {name} must be .*not inf"):
                make_config(method, {name: "inf"})
        if isinstance(f.default, str):
            with pytest.raises(UsageError, match=rf"{method}: {name} must be one of .*'pink'"):
                make_config(method, {name: "pink"})


def test_the_probe_eps_2_is_refused_with_its_bound():
    with pytest.raises(UsageError, match=r"^psg: eps must be in \[0, 1\], not 2$"):
        make_config("psg", {"eps": 2})


def test_a_set_value_of_the_wrong_type_names_the_setting():
    """``--set`` gives text or YAML scalars: each is converted to the field's type, or refused
    naming the method, the setting and the value."""
    config = make_config("psg", {"epochs": "3", "lr": "1e-3", "noise": "uniform"})
    assert (config.epochs, config.lr, config.noise) == (3, 1e-3, "uniform")
    with pytest.raises(UsageError, match=r"^psg: epochs must be a number, not 'three'$"):
        make_config("psg", {"epochs": "three"})
    with pytest.raises(UsageError, match=r"^psg: freeze_bn must be true or false, not 'maybe'$"):
        make_config("psg", {"freeze_bn": "maybe"})


def test_every_mistake_in_the_settings_is_reported_at_once():
    overrides = {"epochs": 1.5, "eps": 2, "noise": "pink", "lamda": 0.1, "lr": "inf"}
    with pytest.raises(UsageError) as caught:
        make_config("psg", overrides)
    assert str(caught.value) == (
        "psg: 5 problems: (1) psg has no hyperparameter(s) lamda (did you mean lam, gamma?) "
        "(known: epochs, batch_size, lr, momentum, weight_decay, eps, eta, steps, gamma, lam, "
        "lam_schedule, noise, early_stop, phi, retain_loss, target, topk, exclude_label, "
        "freeze_bn, cosine, reestimate_bn); (2) epochs must be a whole number, not 1.5; "
        "(3) lr must be > 0 and finite, not inf; (4) eps must be in [0, 1], not 2; "
        "(5) noise must be one of gaussian, laplace, cauchy, uniform, not 'pink'"
    )
    with pytest.raises(UsageError) as caught:
        make_config("boundary_shrink", {"gamma": 0.1, "phi": 1})
    assert str(caught.value) == (
        "boundary_shrink: 2 problems: (1) gamma must be 0, not 0.1 (boundary_shrink fixes "
        "gamma = lam = phi = 0; use psg to change them); (2) phi must be 0, not 1"
    )


def test_a_config_built_in_python_is_checked_by_unlearn():
    import torch

    from revise.data.sets import DecodedSet
    from revise.models.architectures import build
    from revise.models.card import ModelCard
    from revise.unlearn.psg import PSGConfig

    card = ModelCard("small_cnn", 10, 1, (8, 8))
    images = DecodedSet(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    args = (build(card), card, images, images)
    with pytest.raises(UsageError, match=r"psg: eps must be in \[0, 1\], not 2"):
        unlearn(*args, method="psg", config=PSGConfig(eps=2), device="cpu")
    config = PSGConfig()
    with pytest.raises(UsageError, match=r"psg: eps must be in \[0, 1\], not 2"):
        config.eps = 2  # a change is checked too
    assert config.eps == 0.1


def test_unlearn_set_eps_2_exits_2_before_any_work(cli, demo_site, tmp_path):
    out = tmp_path / "run"
    args = cli.unlearn_args(demo_site, out, settings={**cli.run_settings, "eps": 2})
    line = cli.one_line_error(cli(*args, code=2))
    assert "psg: eps must be in [0, 1], not 2" in line
    assert not out.exists() and not out.with_name("run.partial").exists()


def test_a_bad_grid_value_is_refused_before_any_run(cli, demo_site, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", demo_site.model, "--data", demo_site.manifest]
    args += ["--forget", cli.forget, "--grid", "eps=0.1,2", "--set", "epochs=1"]
    line = cli.one_line_error(cli(*args, "-o", out, "--device", "cpu", code=2))
    assert "psg: eps must be in [0, 1], not 2" in line and not out.exists()


def test_a_nine_million_point_grid_is_refused_at_once_without_building_it(
    cli, demo_site, tmp_path, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("the grid was built to be counted")

    monkeypatch.setattr(revise.unlearn.sweep_grid, "expand_grid", never)
    values = ",".join(f"{i + 1}e-6" for i in range(3000))
    out = tmp_path / "sweep"
    args = ["sweep", "--model", demo_site.model, "--data", demo_site.manifest]
    args += ["--forget", cli.forget, "--grid", f"lr={values}", "--grid", f"eps={values}"]
    line = cli.one_line_error(cli(*args, "-o", out, "--device", "cpu", code=2))
    cap = revise.unlearn.sweep_grid.MAX_GRID_POINTS
    assert "9000000 points" in line and f"at most {cap}" in line, line
    assert not out.exists()
    assert f"at most {cap} points" in " ".join(cli("sweep", "--help", code=0).stdout.split())
    # the library refuses it the same way, before any model or data is touched
    with pytest.raises(UsageError, match=f"at most {cap}"):
        revise.unlearn.sweep.sweep(
            None, None, None, method="psg", grid={"lr": list(range(3000)), "eps": [0] * 3000}
        )


def _merge_search(cli, run_folder, demo_site, tmp_path, grid: str):
    for name in ("a", "b"):
        shutil.copytree(run_folder, tmp_path / name)
    args = ["merge", tmp_path / "a", tmp_path / "b", "--search-strengths", "--grid", grid]
    args += ["--data", demo_site.manifest, "--forget", cli.forget, "--device", "cpu"]
    return cli(*args, "--cache", tmp_path / "cache", "-o", tmp_path / "merged")


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        (",".join(str(i / 64) for i in range(65)), "65 values for 2 runs are 4225 candidates"),
        ("0,nan,1", "--grid"),
    ],
)
def test_a_strength_search_too_large_or_not_finite_is_refused_before_decoding(
    cli, run_folder, demo_site, tmp_path, grid, expected
):
    result = _merge_search(cli, run_folder, demo_site, tmp_path, grid)
    line = cli.one_line_error(result)
    assert result.exit_code == 2 and expected in line, line
    assert not (tmp_path / "cache").exists(), "refused before any image was decoded"
    assert not (tmp_path / "merged").exists()
