"""Muon.step at GPT-2 small shapes on CPU, per constraint, against a baseline revision, side by side.

    python bench/muon.py [--layers 2] [--constraints soft_cap,spectral_normalize,hard_cap] [--repeats 2]
                         [--baseline REV] [--world 1,2]

For each world size (1: this process; 2: torchrun with gloo on this machine) and each constraint it times
Muon.step on the hidden matrices of `--layers` GPT-2 small blocks (q, k, v, o 768x768, fc 3072x768,
proj 768x3072) plus the 50304x768 lm_head, and Muon.step with constraint=none on the same matrices; the
difference is the constraint's share. With --baseline (a git revision, e.g. d932973) the same steps of
that revision's muon.py/constraints.py run in the same process, interleaved with ours, on their own copy
of the matrices, and the ratio ours/baseline is printed. Times are the fastest of --repeats rounds after a
warm-up round (this machine may be shared; the minimum drops a slow spell); per rank, the slowest rank.
"""
import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from muon import Muon, default_orth_dtype, rank_and_world_size  # noqa: E402

D, VOCAB = 768, 50304


def gpt2_small_matrices(layers: int, seed: int = 0) -> tuple[list, list]:
    """Hidden matrices of `layers` GPT-2 small blocks and the lm_head, norm ~0.5 RMS->RMS, with gradients."""
    g = torch.Generator().manual_seed(seed)
    def matrix(shape):
        w = torch.randn(shape, generator=g) / shape[-1] ** 0.5 * 0.5
        w.grad = torch.randn(shape, generator=g)
        return w
    hidden = [matrix(s) for _ in range(layers) for s in [(D, D)] * 4 + [(4 * D, D), (D, 4 * D)]]
    return hidden, [matrix((VOCAB, D))]


def load_baseline(rev: str):
    """muon.Muon of git revision `rev` (with that revision's constraints.py, and kernels.py where it has one),
    as separate modules."""
    tmp = tempfile.mkdtemp(prefix="muon_baseline_")
    has_kernels = subprocess.run(["git", "cat-file", "-e", f"{rev}:kernels.py"], cwd=ROOT,
                                 stderr=subprocess.DEVNULL).returncode == 0
    for name in ("kernels", "constraints", "muon") if has_kernels else ("constraints", "muon"):
        src = subprocess.check_output(["git", "show", f"{rev}:{name}.py"], cwd=ROOT, text=True)
        src = src.replace("import constraints\n", "import baseline_constraints as constraints\n")
        src = src.replace("import kernels\n", "import baseline_kernels as kernels\n")
        with open(os.path.join(tmp, f"baseline_{name}.py"), "w") as f:
            f.write(src)
    sys.path.insert(0, tmp)
    return importlib.import_module("baseline_muon").Muon


def min_ms(fns: dict, repeats: int) -> dict:
    """Fastest of `repeats` timings of each function after one warm-up round, the functions taking turns."""
    best = {name: float("inf") for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if round_:
                best[name] = min(best[name], 1000 * (time.perf_counter() - t0))
    return best


def optimizer(cls, constraint: str, layers: int, seed: int):
    hidden, head = gpt2_small_matrices(layers, seed)
    return cls([dict(params=hidden), dict(params=head, lr=0.005)], lr=0.05, constraint=constraint)


def run(args) -> None:
    rank, world = rank_and_world_size()
    Baseline = load_baseline(args.baseline) if args.baseline else None
    for constraint in args.constraints.split(","):
        fns = {"ours": optimizer(Muon, constraint, args.layers, 0).step,
               "ours, none": optimizer(Muon, "none", args.layers, 0).step}
        if Baseline is not None:
            fns["baseline"] = optimizer(Baseline, constraint, args.layers, 0).step
        t = min_ms(fns, args.repeats)
        if world > 1:  # the step waits for the slowest rank
            v = torch.tensor(list(t.values()), dtype=torch.float64)
            dist.all_reduce(v, op=dist.ReduceOp.MAX)
            t = dict(zip(t, v.tolist()))
        if rank == 0:
            line = (f"world {world} {constraint:>18}: Muon.step {t['ours']:8.0f} ms (none: {t['ours, none']:7.0f} ms, "
                    f"constraint share {max(0.0, t['ours'] - t['ours, none']) / t['ours']:5.1%})")
            if "baseline" in t:
                line += f" | baseline {args.baseline} {t['baseline']:8.0f} ms, ours/baseline {t['ours'] / t['baseline']:5.2f}"
            print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--constraints", default="soft_cap,spectral_normalize,hard_cap")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline", default="", help="git revision to compare against (e.g. d932973)")
    parser.add_argument("--world", default="1,2", help="world sizes: 1 in this process, >1 under torchrun")
    parser.add_argument("--worker", action="store_true", help="internal: run as one torchrun rank")
    args = parser.parse_args()
    if args.worker:
        dist.init_process_group("gloo")
        run(args)
        dist.barrier()  # no rank tears gloo down while a peer still uses it
        dist.destroy_process_group()
        return
    print(f"GPT-2 small shapes: {args.layers} layers (x6 matrices) + lm_head {VOCAB}x{D}; CPU threads "
          f"{torch.get_num_threads()}; orthogonalize in {default_orth_dtype(torch.device('cpu'))}", flush=True)
    for world in [int(w) for w in args.world.split(",")]:
        if world == 1:
            run(args)
            continue
        threads = max(1, torch.get_num_threads() // world)  # the ranks share this machine's cores
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", __file__,
               "--worker", f"--layers={args.layers}", f"--constraints={args.constraints}",
               f"--repeats={args.repeats}", f"--baseline={args.baseline}"]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


if __name__ == "__main__":
    main()
