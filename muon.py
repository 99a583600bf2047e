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

Each equal-shape list of a param group is updated as ONE stacked batch: one msign call and one
constraints.apply call per list (48 attention matrices: one call each, not 48), with no host
synchronisation anywhere in step() (no .item(), no data-dependent Python branches), so the GPU queue
never drains.

Distributed: with torch.distributed initialised (gloo or nccl), the lists (shard_plan) are shared out:
  - whole matrices: in a list at least as long as the world, ranks own params round-robin, stack and
    update them, and one all_gather per list (launched asynchronously, so it overlaps the next list's
    compute) hands every rank the new weights; a rank with fewer params in a list pads with zeros.
  - long-side slices: a list shorter than the world (the lm_head: one 50304x768 matrix, ~31% of all
    orthogonalization in GPT-2 small) would leave most ranks idle while one works. Its matrices are
    split along their long side instead, one slice per rank. This is exact, not an approximation:
    msign and every shardable constraint map X to X p(X^T X) for the short-side Gram X^T X, which is
    the sum of the slices' Grams; so each step all_reduces the small (768x768) Gram and each rank
    computes its slice of the result exactly as in one piece. (Splitting the work across ranks any other
    way, e.g. msign of each block, would not be the polar factor of the matrix.)
Momentum is elementwise and cheap, so every rank keeps it for every param: the state_dict is then the
same on every rank.
Without torch.distributed initialised it is plain single-process Muon.

Every option is per param group: the trainer uses one group for hidden matrices and one for the lm_head
(its own lr and w_max), and drives lr schedules and the momentum warm-up (0.85 -> 0.95) by writing
group["lr"] and group["momentum"] before step(), as with any torch optimizer. Embeddings and scalars
belong to torch.optim.Adam.
"""
import math
from typing import NamedTuple

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


class Shard(NamedTuple):
    """One equal-shape list of a param group, and this rank's part of it.
    split False: `owned` are the whole params this rank updates; params[i] is owned by rank
    (first + i) % world, in slot i // world of that rank's all_gather. split True: every rank updates
    slice `rank` of every param's long side (owned == params)."""
    group: dict
    params: list
    owned: list
    first: int
    split: bool


def splits_along_long_side(shape: tuple, count: int, world: int) -> bool:
    """Whether a list of `count` matrices of `shape` is sliced across ranks rather than owned whole:
    when it has fewer matrices than ranks and each rank's slice keeps the matrix's orientation (a slice
    of a tall matrix's rows is still at least as tall as wide)."""
    m, n = shape[-2:]
    long_, short = (m, n) if m >= n else (n, m + 1)  # a wide slice must stay strictly wide
    return world > 1 and count < world and -(-long_ // world) >= short


def shard_plan(param_groups: list[dict], rank: int, world: int) -> list[Shard]:
    """Who updates what, as one Shard per equal-shape list of each group.

    Lists come largest matrices first (their big all_gathers then overlap the rest of the step). Lists of
    whole matrices are owned round-robin, param i to rank (first + i) % world, where `first` continues from
    where the previous such list stopped, so lists shorter than the world size do not all land on rank 0.
    Lists split along the long side (splits_along_long_side; only for constraints that are shardable)
    give every rank a slice of every matrix.
    """
    lists = [(group, params) for group in param_groups for params in equal_shape_lists(group["params"])]
    lists.sort(key=lambda item: -item[1][0].numel())
    plan, first = [], 0
    for group, params in lists:
        shardable = constraints.PROPERTIES[group["constraint"]].shardable
        if shardable and splits_along_long_side(tuple(params[0].shape), len(params), world):
            plan.append(Shard(group, params, params, 0, True))
            continue
        plan.append(Shard(group, params, params[(rank - first) % world::world], first, False))
        first = (first + len(params)) % world
    return plan


def _long_dim(shape) -> int:
    """The dim of (..., m, n) that a long-side slice cuts: rows if m >= n, else columns."""
    return -2 if shape[-2] >= shape[-1] else -1


def _slice_long_side(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Slice `rank` of world equal slices of x's long side (zero-padded to a multiple of world)."""
    dim = _long_dim(x.shape)
    size = -(-x.shape[dim] // world)
    pad = size * world - x.shape[dim]
    if pad:  # zero rows (columns) add nothing to the Gram and stay zero
        x = torch.nn.functional.pad(x, (0, 0, 0, pad) if dim == -2 else (0, pad))
    return x.narrow(dim, rank * size, size)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


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
        self._check_soft_cap_coupling(group)  # the schedule only lowers lr: the first step is the hardest
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # every check before any state changes
            self._check_soft_cap_coupling(group)
        for group in self.param_groups:
            self._update_momentum(group)
        rank, world = rank_and_world_size()
        gathers = []
        for shard in shard_plan(self.param_groups, rank, world):
            if shard.split:
                self._update_slices(shard, rank, world)
                continue
            live = [p for p in shard.owned if p.grad is not None]
            if live:
                torch._foreach_copy_(live, list(self._updated_stack(live, shard.group).unbind(0)))
            if world > 1:
                gathers.append((self._start_all_gather(shard.params, shard.owned, world), shard))
        for (work, received), shard in gathers:
            work.wait()
            n = len(shard.params)  # param i is owned by rank (first + i) % world, in its slot i // world
            torch._foreach_copy_(shard.params, [received[(shard.first + i) % world][i // world] for i in range(n)])
        return loss

    def max_update_norm(self, group: dict) -> float:
        """Bound on the RMS->RMS norm of this group's update, lr * sigma_orth * safety (told to the constraint)."""
        return group["lr"] * ORTH_MAX_SINGULAR_VALUE[group["orthogonalizer"]] * group["safety"]

    def _check_soft_cap_coupling(self, group: dict) -> None:
        """Raises constraints' ValueError (lr too large for w_max) before any weight changes, not midway."""
        if constraints.PROPERTIES[group["constraint"]].coupled:
            constraints.soft_cap_alpha(group["w_max"], self.max_update_norm(group), group["lr"], group["weight_decay"])

    def _update_momentum(self, group: dict) -> None:
        """buf <- momentum * buf + (1 - momentum) * grad for every param of the group, in one foreach."""
        live = [p for p in group["params"] if p.grad is not None]
        for p in live:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        if live:
            torch._foreach_lerp_([self.state[p]["momentum_buffer"] for p in live], [p.grad for p in live],
                                 1 - group["momentum"])

    def _new_weights(self, W: torch.Tensor, grads: torch.Tensor, bufs: torch.Tensor, group: dict,
                     shape: tuple, shards: "constraints.LongSideShards | None" = None) -> torch.Tensor:
        """Decay, orthogonalized step and constraint of a stack W (k, *shape) (or of its long-side slices),
        given the stacked gradients and momentum buffers: one msign call and one constraint call."""
        lr, wd = group["lr"], group["weight_decay"]
        u = grads.lerp_(bufs, group["momentum"]) if group["nesterov"] else bufs
        orth_dtype = group["orth_dtype"] or default_orth_dtype(W.device)
        reduce = shards.reduce if shards is not None else None
        o = constraints.msign(u.to(orth_dtype), coeffs=group["orthogonalizer"], gram_reduce=reduce)
        info = constraints.PROPERTIES[group["constraint"]]
        if not info.decays:  # a decay-type constraint applies lr * wd itself; every other: decay here, first
            W.mul_(1 - lr * wd)
        W.add_(o.to(W.dtype), alpha=-lr * math.sqrt(shape[-2] / shape[-1]))
        # check_finite=False: no host sync; a nan shows up in the loss the trainer logs.
        return constraints.apply(W, group["constraint"], group["w_max"], lr=lr, weight_decay=wd,
                                 max_update_norm=self.max_update_norm(group), check_finite=False,
                                 shards=shards)

    def _updated_stack(self, params: list, group: dict) -> torch.Tensor:
        """New weights of whole params (all of one shape), as a stack (k, *shape)."""
        grads = torch.stack([p.grad for p in params]).to(params[0].dtype)
        bufs = torch.stack([self.state[p]["momentum_buffer"] for p in params])
        return self._new_weights(torch.stack(params), grads, bufs, group, tuple(params[0].shape))

    def _update_slices(self, shard: Shard, rank: int, world: int) -> None:
        """Every rank updates its long-side slice of every param of the list (Grams summed across ranks),
        then all ranks gather the slices back into whole matrices."""
        params = [p for p in shard.params if p.grad is not None]
        if not params:
            return
        shape = tuple(params[0].shape)
        dim = _long_dim(shape)
        take = lambda xs: _slice_long_side(torch.stack(xs), rank, world)  # noqa: E731
        W = take(list(params))
        grads = take([p.grad.to(p.dtype) for p in params])
        bufs = take([self.state[p]["momentum_buffer"] for p in params])
        shards = constraints.LongSideShards(length=shape[dim], reduce=_all_reduce_sum)
        mine = self._new_weights(W.contiguous(), grads.contiguous(), bufs.contiguous(), group=shard.group,
                                 shape=shape, shards=shards).contiguous()
        pieces = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(pieces, mine)
        whole = torch.cat(pieces, dim=dim).narrow(dim, 0, shape[dim])
        torch._foreach_copy_(params, list(whole.unbind(0)))

    @staticmethod
    def _start_all_gather(params: list, owned: list, world: int):
        """Async all_gather of this rank's owned weights of one equal-shape list, zero-padded to
        ceil(len(params) / world) slots. Returns (work handle, one received stack per rank)."""
        slots = -(-len(params) // world)
        send = torch.stack(owned + [torch.zeros_like(params[0])] * (slots - len(owned)))
        received = [torch.empty_like(send) for _ in range(world)]
        return dist.all_gather(received, send, async_op=True), received
