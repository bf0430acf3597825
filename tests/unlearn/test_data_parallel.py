"""The update forwards of run_steps go through DistributedDataParallel while the model itself
stays bare: one gloo process group of one worker, in process (the two-worker equality and
resume tests are in tests/cli/test_distributed.py)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from revise.unlearn.distribution import DataParallel


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_forwards_run_through_the_wrapper_and_leave_the_model_bare(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model, twin = _net(), _net()
        keys = list(model.state_dict())
        seen = []
        model.register_forward_hook(lambda *_: seen.append("hook"))
        parallel = DataParallel(model, torch.device("cpu"), world=2)  # wrap even alone
        assert parallel.ddp is not None
        ddp_forward = type(parallel.ddp).forward
        through = []

        def counting(self, *args, **kwargs):
            through.append(1)
            return ddp_forward(self, *args, **kwargs)

        type(parallel.ddp).forward = counting
        try:
            x = torch.randn(5, 4)
            with parallel.forwards():
                loss = model(x).square().mean()
            loss.backward()
        finally:
            type(parallel.ddp).forward = ddp_forward
        assert through == [1] and seen == ["hook"]  # through the wrapper; the hook fired once
        assert "forward" not in model.__dict__  # the model's own forward is back
        assert list(model.state_dict()) == keys
        twin(x).square().mean().backward()  # the bare module: the same gradients (world 1)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad)
        parallel.close()
        model(x)  # no wrapper any more
        assert through == [1]
    finally:
        dist.destroy_process_group()


def test_one_process_wraps_nothing():
    model = _net()
    parallel = DataParallel(model, torch.device("cpu"), world=1)
    assert parallel.ddp is None
    with parallel.forwards():
        assert "forward" not in model.__dict__
