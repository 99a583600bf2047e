"""Muon, sharded across ranks, with a weight constraint applied after every update.

For each matrix W of shape (..., d_out, d_in) with gradient g (already averaged across ranks):

    buf <- momentum * buf + (1 - momentum) * g
    u   <- (1 - momentum) * g + momentum * buf          (Nesterov; u = buf without it)
    W   <- (1 - lr * wd) * W - lr * sqrt(d_out / d_in) * orth(u)
    W   <- constraints.apply(W, constraint, w_max, max_update_norm=lr * sigma_orth * safety, ...)

orth(u) is the approximate polar factor of u (constraints.msign). The sqrt(d_out/d_in) scale makes the
update's RMS->RMS norm lr * sigma_max(orth(u)) <= lr * sigma_orth, where sigma_orth is the largest singular
value the orthogonalizer can output (ORTH_MAX_SINGULAR_VALUE); that is the max_update_norm the constraint
(e.g. the soft cap's coupling) is told about, times a safety margin for low-precision arithmetic.

Distributed: with torch.distributed initialised (gloo or nccl), the params are split into lists of equal
shape (shard_plan); ranks own the params of each list round-robin and alone orthogonalize, update and
constrain them. Then one all_gather per list (launched asynchronously as soon as that list is done, so it
overlaps the next list's compute) hands every rank the new weights; a rank with fewer params in a list
pads with zeros. Momentum is elementwise and cheap, so every rank keeps it for every param: the
state_dict is then the same on every rank, except the constraint's own warm-start state (e.g.
power-iteration vectors), which lives with the owning rank.
Without torch.distributed initialised it is plain single-process Muon.

Every option is per param group: the trainer uses one group for hidden matrices and one for the lm_head
(its own lr and w_max), and drives lr schedules and the momentum warm-up (0.85 -> 0.95) by writing
group["lr"] and group["momentum"] before step(), as with any torch optimizer. Embeddings and scalars
belong to torch.optim.Adam.
"""
import math

import torch
import torch.distributed as dist

import constraints

# Largest singular value each orthogonalizer outputs, over all inputs (measured in tests/test_muon.py by
# sweeping the normalized singular value over (0, 1]): the fork's five quintic steps peak at 1.14502
# (bf16: 1.148); Polar Express's eight steps end at 1 (float32: 1 + 2e-7; bf16: 1.005). The safety
# factor (default 1.05) covers the bf16 excess.
ORTH_MAX_SINGULAR_VALUE = {
    "fork": constraints.FORK_MAX_SINGULAR_VALUE,
    "polar_express": 1.0,
}

# Constraints whose job is the decay itself (they apply lr * weight_decay): Muon then skips its own decay
# so it is not applied twice. For every other constraint Muon decays before the update, as the soft
# cap's coupling k = w_max (1 - lr wd) + max_update_norm assumes.
DECAY_CONSTRAINTS = ("weight_decay", "spectral_weight_decay")


def default_orth_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA, and on CPUs with native bf16 matmul (AVX512-BF16/AMX: 2-3x faster than float32 there,
    bench/muon.py); float32 on other CPUs, where bf16 matmul is emulated and slow."""
    if device.type == "cuda":
        return torch.bfloat16
    try:
        cpu_has_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        cpu_has_bf16 = False
    return torch.bfloat16 if cpu_has_bf16 else torch.float32


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def equal_shape_lists(params: list) -> list[list]:
    """Params grouped by (shape, dtype, device), in order of first appearance (identical on every rank)."""
    lists = {}
    for p in params:
        lists.setdefault((tuple(p.shape), p.dtype, p.device), []).append(p)
    return list(lists.values())


def shard_plan(param_groups: list[dict], rank: int, world: int) -> list[tuple[dict, list, list, int]]:
    """Who updates what: (group, equal-shape params, the params `rank` owns, the rank owning params[0]).

    Lists come largest matrices first (their big all_gathers then overlap the rest of the step). Within a
    list ownership is round-robin, param i to rank (first + i) % world, and `first` continues from where
    the previous list stopped, so lists shorter than the world size do not all land on rank 0.
    """
    lists = [(group, params) for group in param_groups for params in equal_shape_lists(group["params"])]
    lists.sort(key=lambda item: -item[1][0].numel())
    plan, first = [], 0
    for group, params in lists:
        plan.append((group, params, params[(rank - first) % world::world], first))
        first = (first + len(params)) % world
    return plan


class Muon(torch.optim.Optimizer):
    """Momentum + orthogonalized update + constraint, for 2-D matrices (or 3-D batches of them).

    Args (each also a per-param-group option):
        lr: learning rate; the update's RMS->RMS norm is at most lr * ORTH_MAX_SINGULAR_VALUE[orthogonalizer].
        momentum, nesterov: as in the speedrun (buf.lerp_(g, 1 - momentum), then g.lerp(buf, momentum)).
        weight_decay: decoupled, W <- (1 - lr * weight_decay) W before the update; also passed to the
            constraint (the soft cap's coupling accounts for it).
        constraint, w_max: a method name of constraints.METHODS and the cap in the RMS->RMS norm.
        orthogonalizer: "fork" (the fork's five bounded Newton-Schulz steps) or "polar_express".
        safety: multiplies the orthogonalizer's bound in max_update_norm (margin for bf16 rounding).
        orth_dtype: dtype of the orthogonalization; None picks default_orth_dtype(param.device).
    """

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0,
                 constraint="soft_cap", w_max=1.0, orthogonalizer="fork", safety=1.05, orth_dtype=None):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        constraint=constraint, w_max=w_max, orthogonalizer=orthogonalizer, safety=safety,
                        orth_dtype=orth_dtype)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Validates the group (options and param shapes) before adding it; nothing is changed on error."""
        group = {**self.defaults, **param_group}
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for i, p in enumerate(params):
            if p.ndim not in (2, 3):
                raise ValueError(f"Muon: param {i} of the group has shape {tuple(p.shape)}; Muon trains 2-D "
                                 "matrices (or 3-D batches of them). Give vectors, scalars and embeddings "
                                 "to torch.optim.Adam instead.")
        if group["constraint"] not in constraints.METHODS:
            raise ValueError(f"Muon: unknown constraint {group['constraint']!r}; "
                             f"use one of {sorted(constraints.METHODS)}.")
        if group["orthogonalizer"] not in ORTH_MAX_SINGULAR_VALUE:
            raise ValueError(f"Muon: unknown orthogonalizer {group['orthogonalizer']!r}; "
                             f"use one of {sorted(ORTH_MAX_SINGULAR_VALUE)}.")
        for name, ok, need in [("lr", group["lr"] >= 0, ">= 0"),
                               ("momentum", 0 <= group["momentum"] < 1, "in [0, 1)"),
                               ("weight_decay", group["weight_decay"] >= 0, ">= 0"),
                               ("w_max", group["w_max"] > 0, "> 0"),
                               ("safety", group["safety"] >= 1, ">= 1")]:
            if not ok:
                raise ValueError(f"Muon: {name}={group[name]!r} is invalid; it must be {need}.")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._check_soft_cap_coupling(group)
        rank, world = rank_and_world_size()
        gathers = []
        for group, params, owned, first in shard_plan(self.param_groups, rank, world):
            for p in params:
                self._update_momentum(p, group)
            for p in owned:
                self._update_and_constrain(p, group)
            if world > 1:
                gathers.append((self._start_all_gather(params, owned, world), params, first))
        for (work, received), params, first in gathers:
            work.wait()
            for i, p in enumerate(params):  # param i is owned by rank (first + i) % world, in its slot i // world
                p.copy_(received[(first + i) % world][i // world])
        return loss

    def max_update_norm(self, group: dict) -> float:
        """Bound on the RMS->RMS norm of this group's update, lr * sigma_orth * safety (told to the constraint)."""
        return group["lr"] * ORTH_MAX_SINGULAR_VALUE[group["orthogonalizer"]] * group["safety"]

    def _check_soft_cap_coupling(self, group: dict) -> None:
        """Raises constraints' ValueError (lr too large for w_max) before any weight changes, not midway."""
        if group["constraint"] == "soft_cap":
            constraints.soft_cap_alpha(group["w_max"], self.max_update_norm(group), group["lr"], group["weight_decay"])

    def _update_momentum(self, p: torch.Tensor, group: dict) -> None:
        if p.grad is None:
            return
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        state["momentum_buffer"].lerp_(p.grad, 1 - group["momentum"])

    def _update_and_constrain(self, p: torch.Tensor, group: dict) -> None:
        """Orthogonalized update of one owned matrix, then its constraint, in place."""
        if p.grad is None:
            return
        state, lr, wd = self.state[p], group["lr"], group["weight_decay"]
        buf = state["momentum_buffer"]
        u = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
        orth_dtype = group["orth_dtype"] or default_orth_dtype(p.device)
        o = constraints.msign(u.to(orth_dtype), coeffs=group["orthogonalizer"]).to(p.dtype)
        d_out, d_in = p.shape[-2:]
        if group["constraint"] not in DECAY_CONSTRAINTS:
            p.mul_(1 - lr * wd)
        p.add_(o, alpha=-lr * math.sqrt(d_out / d_in))
        # check_finite=False: no host sync per matrix; a nan shows up in the loss the trainer logs.
        p.copy_(constraints.apply(p, group["constraint"], group["w_max"], lr=lr, weight_decay=wd,
                                  max_update_norm=self.max_update_norm(group), state=state, check_finite=False))

    @staticmethod
    def _start_all_gather(params: list, owned: list, world: int):
        """Async all_gather of this rank's owned weights of one equal-shape list, zero-padded to
        ceil(len(params) / world) slots. Returns (work handle, one received stack per rank)."""
        slots = -(-len(params) // world)
        send = torch.stack(owned + [torch.zeros_like(params[0])] * (slots - len(owned)))
        received = [torch.empty_like(send) for _ in range(world)]
        return dist.all_gather(received, send, async_op=True), received
