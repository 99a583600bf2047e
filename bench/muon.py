"""Per-step cost of Muon's parts at GPT-2 small shapes on CPU: orthogonalize vs constrain vs communicate.

    python bench/muon.py [--layers 2] [--constraints soft_cap,spectral_normalize,hard_cap] [--repeats 2]

Measures world size 1 in this process, then world size 2 under torchrun (gloo) on the same machine, and
prints per-rank milliseconds per step and their ratios. Shapes per layer: q, k, v, o 768x768, fc 3072x768,
proj 768x3072; plus the lm_head 50304x768 once. A full 12-layer model is slow on a small CPU, so by default
2 layers stand in for 12 (the hidden-matrix costs scale linearly with the number of layers).
Each part is timed on exactly the matrices Muon gives this rank (muon.shard_plan), and the full
Muon.step() alongside, as a check that the parts account for the step. "communicate" is the all_gathers
run back to back; inside Muon.step they overlap compute. Times are the fastest of --repeats interleaved
rounds (this machine may be shared). Expect a few minutes: hard_cap runs 14-step msigns in float32.
"""
import argparse
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import constraints  # noqa: E402
from muon import Muon, default_orth_dtype, rank_and_world_size, shard_plan  # noqa: E402

D, VOCAB = 768, 50304


def gpt2_small_matrices(layers: int) -> tuple[list, list]:
    """Hidden matrices of `layers` GPT-2 small blocks and the lm_head, semi-orthogonal-ish, with gradients."""
    g = torch.Generator().manual_seed(0)
    def matrix(shape):
        w = torch.randn(shape, generator=g) / shape[-1] ** 0.5 * 0.5
        w.grad = torch.randn(shape, generator=g)
        return w
    hidden = [matrix(s) for _ in range(layers) for s in [(D, D)] * 4 + [(4 * D, D), (D, 4 * D)]]
    return hidden, [matrix((VOCAB, D))]


def min_seconds(fns: dict, repeats: int) -> dict:
    """Fastest of `repeats` timings of each function, after one warm-up round; the functions take turns
    in every round, so a slow spell of a shared machine hits them alike and the minimum drops it."""
    best = {name: float("inf") for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if round_:
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def part_timings(hidden, lm_head, constraint: str, repeats: int) -> dict:
    """Seconds per step on this rank for each part of Muon's step, and for the whole step."""
    rank, world = rank_and_world_size()
    lr = 0.05
    opt = Muon([dict(params=hidden), dict(params=lm_head, lr=lr / 10)], lr=lr, constraint=constraint)
    plan = shard_plan(opt.param_groups, rank, world)  # exactly the matrices Muon.step gives this rank
    owned = [(p, group) for group, _, mine, _ in plan for p in mine]
    dtype = default_orth_dtype(torch.device("cpu"))
    states = {id(p): {} for p, _ in owned}  # warm-start state kept across steps, as Muon keeps it

    def orthogonalize():
        for p, _ in owned:
            constraints.msign(p.grad.to(dtype), coeffs="fork").to(p.dtype)

    def constrain():
        for p, group in owned:
            constraints.apply(p, constraint, group["w_max"], lr=group["lr"], max_update_norm=opt.max_update_norm(group),
                              state=states[id(p)], check_finite=False)

    def communicate():  # the all_gathers of Muon.step, one after another (no overlap with compute)
        for _, params, mine, _ in plan:
            slots = -(-len(params) // world)
            send = torch.stack(mine + [torch.zeros_like(params[0])] * (slots - len(mine)))
            dist.all_gather([torch.empty_like(send) for _ in range(world)], send)

    parts = {"orthogonalize": orthogonalize, "constrain": constrain, "Muon.step": opt.step}
    if world > 1:
        parts["communicate"] = communicate
    out = {"communicate": 0.0, **min_seconds(parts, repeats)}
    if world > 1:  # report the slowest rank: the step waits for it
        t = torch.tensor(list(out.values()), dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        out = dict(zip(out, t.tolist()))
    return out


def report(world: int, constraint: str, t: dict) -> None:
    o = t["orthogonalize"]
    parts = o + t["constrain"] + t["communicate"]
    print(f"world {world} {constraint:>18}: orthogonalize {1e3 * o:8.0f} ms  constrain {1e3 * t['constrain']:8.0f} ms"
          f"  communicate {1e3 * t['communicate']:7.0f} ms  Muon.step {1e3 * t['Muon.step']:8.0f} ms | "
          f"constrain/orth {t['constrain'] / o:5.2f}  comm/orth {t['communicate'] / o:5.2f}"
          f"  parts/step {parts / t['Muon.step']:5.2f}", flush=True)


def run(args) -> dict:
    hidden, lm_head = gpt2_small_matrices(args.layers)
    results = {}
    for constraint in args.constraints.split(","):
        results[constraint] = t = part_timings(hidden, lm_head, constraint, args.repeats)
        if rank_and_world_size()[0] == 0:
            report(rank_and_world_size()[1], constraint, t)
    return results


def orth_dtype_ratio(repeats: int) -> float:
    """msign time in float32 / in bf16 on one 3072x768 matrix (why bf16 is the default on CPUs that have it)."""
    x = torch.randn(4 * D, D)
    t = min_seconds({"fp32": lambda: constraints.msign(x, coeffs="fork"),
                     "bf16": lambda: constraints.msign(x.bfloat16(), coeffs="fork")}, repeats)
    return t["fp32"] / t["bf16"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--constraints", default="soft_cap,spectral_normalize,hard_cap")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help="internal: run as one torchrun rank")
    args = parser.parse_args()
    if args.worker:
        dist.init_process_group("gloo")
        run(args)
        dist.destroy_process_group()
        return
    print(f"GPT-2 small shapes: {args.layers} layers (x6 matrices) + lm_head {VOCAB}x{D}; CPU threads "
          f"{torch.get_num_threads()}; orthogonalize in {default_orth_dtype(torch.device('cpu'))} "
          f"(msign float32/bf16 time at 3072x768: {orth_dtype_ratio(args.repeats):.2f}x)", flush=True)
    run(args)
    threads = max(1, torch.get_num_threads() // 2)  # the two ranks share this machine's cores
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           "--worker", f"--layers={args.layers}", f"--constraints={args.constraints}", f"--repeats={args.repeats}"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


if __name__ == "__main__":
    main()
