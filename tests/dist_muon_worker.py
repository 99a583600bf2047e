"""A few Muon steps on a tiny set of matrices, in one process or under torchrun (gloo).

    torchrun --standalone --nproc_per_node=2 tests/dist_muon_worker.py OUT_DIR CONSTRAINT [CONSTRAINT ...]

saves, per rank and constraint, the weights after every step of an uninterrupted run and of a run
resumed from state_dict() after RESUME_AT steps. tests/test_muon.py calls trajectories() in-process
(single process, torch.distributed not initialised) and compares.

The gradients come from a seeded toy loss that every rank evaluates on the same data, as if they had
been all-reduced. The matrices form equal-shape lists of 3, 2 and 1 (7 params in all, plus a 3-D batch),
so the world size divides none of the list lengths.
"""
import contextlib
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from muon import Muon  # noqa: E402

HIDDEN_SHAPES = [(16, 8), (8, 16), (16, 8), (12, 12), (8, 16), (16, 8), (2, 8, 8)]
LM_HEAD_SHAPE = (32, 8)
STEPS, RESUME_AT = 4, 2


SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def no_host_sync():
    """Inside: every Tensor method that hands a value to Python (a host sync on a GPU) raises AssertionError."""
    saved = {name: getattr(torch.Tensor, name) for name in SYNCS}
    def trap(name):
        def raise_(*args, **kwargs):
            raise AssertionError(f"host sync: Tensor.{name} called")
        return raise_
    try:
        for name in SYNCS:
            setattr(torch.Tensor, name, trap(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def make_params(seed: int = 0) -> tuple[list, list]:
    """Hidden matrices and an lm_head, random, with RMS->RMS norm about 0.9 (inside a cap of 1)."""
    g = torch.Generator().manual_seed(seed)
    def init(shape):
        w = torch.randn(shape, generator=g)
        sigma = torch.linalg.matrix_norm(w, ord=2).amax()
        return (0.9 * w / (sigma * (shape[-1] / shape[-2]) ** 0.5)).requires_grad_()
    return [init(s) for s in HIDDEN_SHAPES], [init(LM_HEAD_SHAPE)]


def make_optimizer(hidden: list, lm_head: list, constraint: str) -> Muon:
    return Muon([dict(params=hidden), dict(params=lm_head, lr=0.05, w_max=2.0)], lr=0.2,
                weight_decay=0.1, constraint=constraint, orth_dtype=torch.float32)


def toy_loss_backward(params: list, step: int) -> None:
    """Sets p.grad from sum_i mean((W_i X_i - Y_i)^2) on data seeded by step (the same on every rank)."""
    g = torch.Generator().manual_seed(1000 + step)
    loss = 0.0
    for p in params:
        x = torch.randn(*p.shape[:-2], p.shape[-1], 5, generator=g)
        y = torch.randn(*p.shape[:-1], 5, generator=g)
        loss = loss + ((p @ x - y) ** 2).mean()
    for p in params:
        p.grad = None
    loss.backward()


def schedule(opt: Muon, step: int) -> None:
    """Caller-driven momentum warm-up and lr decay, through param_groups as with any torch optimizer."""
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["momentum"] = 0.85 + 0.10 * min(step / 3, 1)
        group["lr"] = group["initial_lr"] * (1 - 0.1 * step)


def run(constraint: str, steps: int, resume_at: int | None = None) -> list[list[torch.Tensor]]:
    """Weights after every step; with resume_at, the optimizer is rebuilt from its state_dict there."""
    hidden, lm_head = make_params()
    params = hidden + lm_head
    opt = make_optimizer(hidden, lm_head, constraint)
    trajectory = []
    for step in range(steps):
        if step == resume_at:
            saved = opt.state_dict()
            opt = make_optimizer(hidden, lm_head, constraint)
            opt.load_state_dict(saved)
        schedule(opt, step)
        toy_loss_backward(params, step)
        with no_host_sync():  # also under torchrun: the collectives must not sync either
            opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


def trajectories(constraint: str) -> dict:
    return {"uninterrupted": run(constraint, STEPS), "resumed": run(constraint, STEPS, RESUME_AT)}


if __name__ == "__main__":
    out_dir, names = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name in names:
        torch.save(trajectories(name), os.path.join(out_dir, f"{name}_rank{rank}.pt"))
    # CI once saw a rank abort at exit ("terminate called without an active exception": a C++ thread still
    # joinable when static destructors run). So: every rank is done with gloo before any tears it down, and
    # the process then leaves without running those destructors (its files are written and closed).
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
