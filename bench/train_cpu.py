"""Tokens/s of a training preset on this machine, and the share of step time spent in the constraint.

    python bench/train_cpu.py [--preset=shakespeare] [--steps=6] [--dtype=auto] [--compiled] [any --field=value]

Runs the same steps with the preset's constraint and with constraint=none, interleaved (so both see the
same machine load), and also times every constraints.apply call inside the constrained run. Prints
ratios; the target for the Shakespeare preset is a constraint share under 10% of step time. --compiled adds
a third run, the constrained one with its loss torch.compile'd (what --compile=auto picks for long CPU runs),
and prints its step time against the eager one; its warm-up step (step 0, untimed) compiles.
--dtype=auto (the default) is bf16 only on CPUs with native bf16 (emulated bf16 is ~30x slower); the
dtype actually used is printed.
"""
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import constraints  # noqa: E402
import train_gpt as tg  # noqa: E402


class Timed:
    """Wraps constraints.apply to accumulate the seconds spent inside it."""

    def __init__(self):
        self.seconds, self.inner = 0.0, constraints.apply

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


def setup(hp, compile=False):
    model = tg.make_model(hp)
    return model, tg.make_optimizers(model, hp), tg.model_fns(model, compiled=compile).loss


def main(argv):
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return
    steps = [a for a in argv if a.startswith("--steps=")]
    compiled = "--compiled" in argv
    rest = [a for a in argv if not a.startswith("--steps=") and a != "--compiled"]
    try:
        steps = int(steps[-1].split("=", 1)[1]) if steps else 6
    except ValueError:
        raise ValueError(f"{steps[-1]}: use a whole number of steps, e.g. --steps=6") from None
    if steps < 1:
        raise ValueError(f"--steps={steps} must be >= 1")
    if not any(a.startswith("--preset=") for a in rest):
        rest.insert(0, "--preset=shakespeare")
    hp = tg.Hyperparameters.from_args(rest)
    hp.vocab_size = tg.read_vocab_size(hp.train_files, hp.vocab_size)
    hp_none = tg.Hyperparameters(**{**hp.__dict__, "constraint": "none"})
    train = tg.TokenStream(hp.train_files, hp.vocab_size, "training")
    amp, dtype_used = tg.autocast_for(hp, torch.device("cpu"))
    runs = {"constrained": (hp, *setup(hp)), "none": (hp_none, *setup(hp_none))}
    if compiled:
        runs["compiled"] = (hp, *setup(hp, compile=True))
    timer = Timed()
    times = {k: [] for k in runs}
    apply_seconds = 0.0
    print(f"preset {hp.preset}: d {hp.d_model}, {hp.n_layer} layers, batch {hp.batch_size}x{hp.seq_len}, "
          f"{dtype_used} (--dtype={hp.dtype}), constraint {hp.constraint}, {torch.get_num_threads()} threads; {steps} timed steps each")
    for step in range(steps + 1):  # step 0 is warm-up, untimed
        for name, (h, model, opts, loss_fn) in runs.items():
            constraints.apply = timer if name == "constrained" else timer.inner
            before = timer.seconds
            t0 = time.perf_counter()
            tg.train_step(model, opts, train, h, step, tg.Context.local(h, torch.device("cpu"), amp), loss_fn)
            if step:
                times[name].append(time.perf_counter() - t0)
                if name == "constrained":
                    apply_seconds += timer.seconds - before
    constraints.apply = timer.inner
    t_con, t_none = (sum(times[k]) / steps for k in ("constrained", "none"))
    tokens = hp.batch_size * hp.seq_len
    print(f"tokens/s constrained: {tokens / t_con:,.0f}   unconstrained: {tokens / t_none:,.0f}")
    print(f"step time constrained / unconstrained: {t_con / t_none:.3f}")
    print(f"constraint share of step time, timed inside constraints.apply: {apply_seconds / steps / t_con:.1%}")
    print(f"constraint share of step time, by difference of the two runs:  {max(0.0, t_con - t_none) / t_con:.1%}")
    if compiled:
        t_comp = sum(times["compiled"]) / steps
        print(f"step time compiled / eager (constrained): {t_comp / t_con:.3f}  ({tokens / t_comp:,.0f} tokens/s compiled)")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
