"""`revise merge`: task arithmetic, composition, BatchNorm re-estimation, alignment checks and
an end-to-end merge of two real unlearning runs through the command line."""

from __future__ import annotations

import json

import pytest
import torch
from clirunner import invoke
from torch import nn

from revise._run_record import RunRecord
from revise.data.sets import DecodedSet
from revise.errors import ModelError, UsageError
from revise.merge import (
    RunInput,
    check_aligned,
    compose,
    merge_runs,
    reestimate_batchnorm,
    split_rules,
    task_arithmetic,
)
from revise.models.architectures import build
from revise.models.card import ModelCard

CARD = ModelCard("small_cnn", 10, 1, (8, 8), mean=(0.3,), std=(0.4,))


def _net(seed: int, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    card = ModelCard("small_cnn", 10, 1, (8, 8), arch_kwargs=kwargs)
    return build(card).eval()


def _run(name: str, net: nn.Module, digest: str = "base") -> RunInput:
    return RunInput(name, net, CARD, RunRecord(method="psg", base_model_digest=digest))


# ------------------------------------------------------------------------------------------
# task arithmetic


def test_task_arithmetic_known_values_with_a_per_module_override():
    base = {
        "conv.weight": torch.tensor([1.0, 2.0]),
        "fc.weight": torch.tensor([0.0, 10.0]),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    a = {
        "conv.weight": torch.tensor([3.0, 2.0]),  # task vector [2, 0]
        "fc.weight": torch.tensor([1.0, 10.0]),  # [1, 0]
        "bn.num_batches_tracked": torch.tensor(100),
    }
    b = {
        "conv.weight": torch.tensor([1.0, 6.0]),  # [0, 4]
        "fc.weight": torch.tensor([0.0, 12.0]),  # [0, 2]
        "bn.num_batches_tracked": torch.tensor(200),
    }
    merged = task_arithmetic(base, [a, b], [0.5, 1.0])
    assert torch.equal(merged["conv.weight"], torch.tensor([2.0, 6.0]))  # 1+0.5*2, 2+1*4
    assert torch.equal(merged["fc.weight"], torch.tensor([0.5, 12.0]))
    assert merged["bn.num_batches_tracked"].item() == 7  # integers: the base's, not averaged
    assert merged["bn.num_batches_tracked"].dtype == torch.int64
    with_override = task_arithmetic(base, [a, b], [0.5, 1.0], [("fc.*", (1.0, 0.0))])
    assert torch.equal(with_override["conv.weight"], torch.tensor([2.0, 6.0]))  # untouched
    assert torch.equal(with_override["fc.weight"], torch.tensor([1.0, 10.0]))  # a's fc exactly
    zero = task_arithmetic(base, [a, b], [0.0, 0.0])
    assert all(torch.equal(zero[k], base[k]) for k in base)
    with pytest.raises(UsageError, match="2 strengths for 1 runs"):
        task_arithmetic(base, [a], [0.5, 1.0])


@pytest.mark.parametrize("text", ["nan", "0.5,inf", "-inf"])
def test_strengths_must_be_finite(text):
    from revise.merge.arithmetic import parse_strengths

    with pytest.raises(UsageError, match="must be finite"):
        parse_strengths(text, 2)
    assert parse_strengths("0.5,1e0", 2) == (0.5, 1.0)


# ------------------------------------------------------------------------------------------
# composition


def test_take_patterns_select_exactly_the_keys_they_name():
    nets = [_net(seed) for seed in range(3)]
    states = [n.state_dict() for n in nets]
    rules = [("fc.*", 1), ("features.1.*", 2), ("*", 0)]
    merged, chosen = compose(states, rules)
    assert set(merged) == set(states[0])
    for key, value in merged.items():
        want = 1 if key.startswith("fc.") else 2 if key.startswith("features.1.") else 0
        assert chosen[key] == want, key
        assert torch.equal(value, states[want][key]), key
    assert {k for k, v in chosen.items() if v == 1} == {"fc.weight", "fc.bias"}
    assert {k for k, v in chosen.items() if v == 2} == {
        f"features.1.{b}"
        for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    with pytest.raises(UsageError, match=r"features\.0\.weight"):
        compose(states, [("fc.*", 1)])  # the backbone keys are covered by nothing


def test_backbone_head_split_is_found_from_the_architecture():
    net = _net(0)
    assert split_rules(net, backbone=0, head=1) == [("fc.*", 1), ("*", 0)]
    other = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10), nn.Identity()
    )
    assert split_rules(other, backbone=1, head=0) == [("3.*", 0), ("*", 1)]  # not hard-coded


# ------------------------------------------------------------------------------------------
# BatchNorm re-estimation


def test_batchnorm_statistics_are_those_of_the_retain_data():
    net = _net(0)
    bn = net.features[1]
    with torch.no_grad():
        bn.running_mean.fill_(5.0)  # stale statistics, as a weight-space merge leaves them
        bn.running_var.fill_(9.0)
    bn.num_batches_tracked.fill_(123)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(200, 1, 8, 8, generator=g)
    data = DecodedSet(x, torch.zeros(200, dtype=torch.long))
    layers = reestimate_batchnorm(net, CARD, data, batch_size=256, device="cpu")
    assert layers == 2
    with torch.no_grad():  # by hand: the first conv's output on the normalised retain images
        z = net.features[0]((x - 0.3) / 0.4)
    want_mean = z.mean(dim=(0, 2, 3))
    want_var = z.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_mean, want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, want_var, rtol=1e-5, atol=1e-6)
    assert bn.num_batches_tracked.item() == 1
    assert bn.momentum == 0.1 and not net.training
    # in batches, the cumulative average of the batch statistics
    reestimate_batchnorm(net, CARD, data, batch_size=100, device="cpu")
    halves = [z[:100].mean(dim=(0, 2, 3)), z[100:].mean(dim=(0, 2, 3))]
    torch.testing.assert_close(bn.running_mean, (halves[0] + halves[1]) / 2)
    assert bn.num_batches_tracked.item() == 2
    # uneven data: 201 images in batches of at most 200 are two batches of 101 and 100, each
    # weighted by its images - the mean is the data's mean, not dominated by a 1-image batch
    x = torch.cat([x, torch.ones(1, 1, 8, 8) * 50])  # one far-off image
    data = DecodedSet(x, torch.zeros(201, dtype=torch.long))
    reestimate_batchnorm(net, CARD, data, batch_size=200, device="cpu")
    with torch.no_grad():
        z = net.features[0]((x - 0.3) / 0.4)
    torch.testing.assert_close(bn.running_mean, z.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------
# alignment


def test_runs_of_another_base_model_are_refused_by_name():
    runs = [_run("a", _net(0)), _run("b", _net(1), digest="other")]
    with pytest.raises(ModelError, match="run b revises another base model"):
        check_aligned(runs)
    with pytest.raises(ModelError, match=r"run a: run\.json has no base_model_digest"):
        check_aligned([_run("a", _net(0), digest=""), _run("b", _net(1))])


def test_missing_key_and_shape_mismatch_name_the_run_and_key():
    class NoHeadBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _net(0)
            self.inner.fc = nn.Linear(32, 10, bias=False)

        def state_dict(self, *args, **kwargs):
            return self.inner.state_dict(*args, **kwargs)

    with pytest.raises(ModelError, match=r"run short has no key 'fc\.bias'"):
        check_aligned([_run("full", _net(0)), _run("short", NoHeadBias())])
    with pytest.raises(ModelError, match=r"run wide: key 'features\.0\.weight' has shape"):
        check_aligned([_run("narrow", _net(0)), _run("wide", _net(0, widths=(8, 32)))])
    half = _net(0).half()
    with pytest.raises(ModelError, match=r"run half: key .* is torch\.float16"):
        check_aligned([_run("full", _net(0)), _run("half", half)])
    base = _net(0)
    runs = [_run("a", _net(1)), _run("b", _net(2))]
    with pytest.raises(ModelError, match="revises another base model"):
        merge_runs(runs, base=base, strengths=[0.5, 0.5])  # digest of base is not "base"


def test_merge_mode_must_be_one_or_the_other():
    runs = [_run("a", _net(1)), _run("b", _net(2))]
    with pytest.raises(UsageError, match="not both"):
        merge_runs(runs, backbone="a", head="b", strengths=[1, 1])
    with pytest.raises(UsageError, match="nothing says how to merge"):
        merge_runs(runs)
    with pytest.raises(UsageError, match="no run is called 'c'"):
        merge_runs(runs, backbone="a", head="c")
    # per-key overrides alone leave every other key without a strength
    from revise.models.io import weights_digest

    base = _net(0)
    runs = [_run(n, _net(i), weights_digest(base)) for i, n in ((1, "a"), (2, "b"))]
    with pytest.raises(UsageError, match="overrides apply on top of strengths") as caught:
        merge_runs(runs, base=base, overrides=[("fc.*", 1.0)])
    assert "--strengths" in caught.value.hint


# ------------------------------------------------------------------------------------------
# end to end: two real runs, merged both ways through the command line


# two real unlearning runs merged both ways: end to end, in the slow set (run by CI)
@pytest.mark.slow
def test_merge_cli_end_to_end(merge_site, tmp_path):
    from revise.models.io import load_model, weights_digest
    from revise.unlearn.evaluate import predict

    site = merge_site
    forgetting, retention = site.forgetting, site.retention
    common = ["--data", site.manifest, "--forget", site.forget, "--device", "cpu"]

    composed = tmp_path / "composed"
    result = invoke(
        "merge", forgetting, retention, "--backbone", "retention", "--head", "0",
        "--finetune-epochs", "1", "-o", composed, *common,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((composed / "run.json").read_text())
    assert record["method"] == "merge" and record["merge"]["mode"] == "compose"
    assert record["merge"]["rules"] == [
        {"pattern": "fc.*", "run": "forgetting"},
        {"pattern": "*", "run": "retention"},
    ]
    assert record["merge"]["finetune"]["epochs"] == 1
    digests = [i["weights_digest"] for i in record["merge"]["inputs"]]
    assert digests == [weights_digest(load_model(p).module) for p in (forgetting, retention)]
    base_digest = weights_digest(load_model(site.base).module)
    assert record["base_model_digest"] == base_digest

    searched = tmp_path / "searched"
    result = invoke(
        "merge", forgetting, retention, "--search-strengths", "--grid", "0,0.5,1",
        "--strength", "fc.*=1,0", "-o", searched, *common,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((searched / "run.json").read_text())
    merge = record["merge"]
    assert merge["mode"] == "strengths" and merge["search"]["criterion"] == "estimated_distance"
    assert len(merge["search"]["candidates"]) == 9
    best = merge["search"]["candidates"][0]["strengths"]
    assert list(merge["strengths"].values()) == best
    assert merge["overrides"] == [{"pattern": "fc.*", "strengths": [1.0, 0.0]}]
    assert merge["batchnorm"]["reestimated_layers"] == 2
    assert record["base_model_digest"] == base_digest

    for folder in (composed, searched):
        loaded = load_model(folder)
        assert loaded.card.num_classes == 10
        report = tmp_path / f"{folder.name}.json"
        result = invoke(
            "evaluate", "--model", folder, "--data", site.manifest, "--forget", site.forget,
            "--device", "cpu", "--json", report,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        metrics = json.loads(report.read_text())
        assert set(metrics) == set(site.data.sets)
        for name, subset in site.data.sets.items():  # known answers: this model's predictions
            x, y = subset.x, subset.y
            right = predict(loaded.module, loaded.card, x, device="cpu").argmax(1) == y
            assert metrics[name]["n"] == len(y)
            assert metrics[name]["accuracy"] == pytest.approx(right.float().mean().item(), abs=1e-4)
        # a merged model exports like any run, parity checked on held-out images
        bundle = tmp_path / f"{folder.name}-bundle"
        result = invoke("export", folder, "-o", bundle, "--data", site.manifest)
        assert result.exit_code == 0, result.output
        assert (bundle / "model.onnx").is_file() and "labels agree 1.000" in result.output

    # given strengths: the merged weights are the arithmetic's, BatchNorm aside
    given = tmp_path / "given"
    result = invoke(
        "merge", forgetting, retention, "--strengths", "0.7,0.5", "--base", site.base,
        "-o", given, *common,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = [load_model(p).module.state_dict() for p in (forgetting, retention)]
    want = task_arithmetic(load_model(site.base).module.state_dict(), runs, [0.7, 0.5])
    got = load_model(given).module.state_dict()
    torch.testing.assert_close(got["fc.weight"], want["fc.weight"])
    torch.testing.assert_close(got["features.0.weight"], want["features.0.weight"])


def _folder_bytes(*folders) -> dict:
    files = [p for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()]
    return {p: p.read_bytes() for p in files}


def test_merge_keep_bn_keeps_the_merged_statistics_and_reestimate_bn_replaces_them(
    merge_site, tmp_path
):
    from revise.models.io import load_model

    site = merge_site
    args = ["merge", site.forgetting, site.retention, "--strengths", "0.5,0.5"]
    args += ["--data", site.manifest, "--forget", site.forget, "--device", "cpu"]
    stats = {}
    for flag in ("--keep-bn", "--reestimate-bn"):
        result = invoke(*args, flag, "-o", tmp_path / flag)
        assert result.exit_code == 0, result.output
        record = json.loads((tmp_path / flag / "run.json").read_text())["merge"]["batchnorm"]
        assert (record["reestimated_layers"] > 0) == (flag == "--reestimate-bn"), record
        state = load_model(tmp_path / flag).module.state_dict()
        stats[flag] = {k: v for k, v in state.items() if k.endswith("running_mean")}
    runs = [load_model(r).module.state_dict() for r in (site.forgetting, site.retention)]
    for key, kept in stats["--keep-bn"].items():  # the strength merge of the statistics
        base = load_model(site.base).module.state_dict()[key]
        torch.testing.assert_close(
            kept, base + 0.5 * (runs[0][key] - base) + 0.5 * (runs[1][key] - base)
        )
        assert not torch.allclose(stats["--reestimate-bn"][key], kept)


def test_merge_cli_errors(merge_site, tmp_path):
    site = merge_site
    shared = _folder_bytes(site.forgetting, site.retention)
    result = invoke(
        "merge", site.forgetting, site.retention, "--take", "fc.*=1", "-o", tmp_path / "m"
    )
    assert result.exit_code == 2
    assert "no --take pattern covers the key 'features.0.weight'" in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    for name in ("model.safetensors", "card.json"):
        (other / name).write_bytes((site.retention / name).read_bytes())
    record = json.loads((site.retention / "run.json").read_text())
    record["base_model_digest"] = "0" * 64
    (other / "run.json").write_text(json.dumps(record))
    result = invoke(
        "merge", site.forgetting, other, "--backbone", "0", "--head", "1", "-o", tmp_path / "m"
    )
    assert result.exit_code == 1
    assert "run other revises another base model" in result.stderr
    assert not (tmp_path / "m").exists()
    assert _folder_bytes(site.forgetting, site.retention) == shared  # only read, never written


@pytest.mark.slow  # end to end; CI runs it with the slow set
def test_a_gate_aware_search_prefers_strengths_that_pass_the_gates(merge_site, tmp_path):
    """With the base model itself as the reference, distance alone picks strengths 0 (no edit,
    nothing forgotten); a gate demanding some forgetting must move the choice to a merge that
    forgets."""
    site = merge_site
    gates = tmp_path / "gates.yaml"
    gates.write_text(
        "gates:\n"
        "  - name: the digit 0 is forgotten\n"
        "    metric: accuracy\n"
        "    set: forget\n"
        "    at_most: original - 0.01\n"
        "  - name: judged on the exported bundle, not in the search\n"
        "    metric: parity_label_agreement\n"
        "    at_least: 1.0\n"
    )
    args = ["merge", site.forgetting, site.retention, "--search-strengths", "--grid", "0,1"]
    args += ["--data", site.manifest, "--forget", site.forget, "--device", "cpu"]
    args += ["--reference", site.base]
    chosen = {}
    for name, extra in (("plain", []), ("gated", ["--criteria", gates])):
        result = invoke(*args, *extra, "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
        chosen[name] = json.loads((tmp_path / name / "run.json").read_text())
    plain, gated = (chosen[k]["merge"] for k in ("plain", "gated"))
    assert list(plain["strengths"].values()) == [0.0, 0.0]  # the reference itself
    assert list(gated["strengths"].values()) != [0.0, 0.0]
    assert gated["search"]["criteria"]["gates_failed_by_best"] == 0
    assert gated["search"]["candidates"][0]["gates_failed"] == 0
    assert any(c["gates_failed"] == 1 for c in gated["search"]["candidates"])
    forget = chosen["gated"]["metrics"]["forget"]["accuracy"]
    assert forget <= chosen["plain"]["metrics"]["forget"]["accuracy"] - 0.01
    assert (
        "every gate passes" in invoke(*args, "--criteria", gates, "-o", tmp_path / "again").output
    )


def test_the_gate_judge_measures_the_baselines_once_and_judges_as_validate(merge_site, tmp_path):
    from revise.models.io import load_model
    from revise.validate.api import validate
    from revise.validate.criteria import load_criteria
    from revise.validate.judge import gate_judge

    gates = tmp_path / "gates.yaml"
    gates.write_text(
        "gates:\n"
        "  - {metric: accuracy, set: forget, at_most: original - 0.05}\n"
        "  - {metric: accuracy, set: heldout_forget, at_most: 0.9}\n"
        "  - {metric: accuracy, set: heldout_retain, at_least: original - 0.1}\n"
        "  - {metric: loss_mia, at_most: 0.55}\n"
    )
    criteria = load_criteria(gates)
    base = load_model(merge_site.base)
    # a forgetting run and an untouched copy of the base: far apart on these gates (margins of
    # 0.05 and more), so each candidate's own failures are told apart
    candidates = [load_model(merge_site.forgetting).module, load_model(merge_site.base).module]
    calls = []
    base.module.register_forward_hook(lambda *_: calls.append(1))
    judge = gate_judge(criteria, merge_site.data, base.module, None, base.card, "cpu")
    assert (judge.source, judge.sha256) == (criteria.source, criteria.sha256)
    failed = [judge.failed(candidates[0])]
    after_first = len(calls)
    failed.append(judge.failed(candidates[1]))
    assert after_first > 0 and len(calls) == after_first  # the original: predicted once
    failing = []
    for candidate, n_failed in zip(candidates, failed, strict=True):
        models = {"candidate": candidate, "original": base.module}
        alone = validate(models, merge_site.data, criteria, card=base.card, device="cpu")
        assert n_failed == len(alone.failed())
        failing.append({v.gate.name for v in alone.failed()})
    assert failing[1] == {"accuracy on forget at_most original - 0.05",
                          "accuracy on heldout_forget at_most 0.9"}  # fmt: skip
    assert failing[0] != failing[1]  # each candidate is measured, not a cached one


def test_criteria_need_a_search_and_the_models_their_gates_name(merge_site, tmp_path):
    site = merge_site
    gates = tmp_path / "gates.yaml"
    gates.write_text(
        "gates:\n  - metric: loss_mia\n    between: [reference - 0.05, reference + 0.05]\n"
    )
    common = ["--data", site.manifest, "--forget", site.forget, "--device", "cpu"]
    no_search = invoke(
        "merge", site.forgetting, site.retention, "--strengths", "1,1", "--criteria", gates,
        "-o", tmp_path / "a", *common,
    )  # fmt: skip
    assert no_search.exit_code == 2 and "add --search-strengths" in no_search.output
    no_reference = invoke(
        "merge", site.forgetting, site.retention, "--search-strengths", "--criteria", gates,
        "-o", tmp_path / "b", *common,
    )  # fmt: skip
    assert no_reference.exit_code == 2 and "needs the reference model" in no_reference.output
    gates.write_text("gates:\n  - metric: parity_label_agreement\n    at_least: 1.0\n")
    only_onnx = invoke(
        "merge", site.forgetting, site.retention, "--search-strengths", "--criteria", gates,
        "-o", tmp_path / "c", *common,
    )  # fmt: skip
    assert only_onnx.exit_code == 2 and "none the merged weights" in only_onnx.output
    assert not (tmp_path / "b").exists()
