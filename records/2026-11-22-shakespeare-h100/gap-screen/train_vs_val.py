"""Final train loss against final val loss in speedrun-format logs: is the gap to a reported loss a
generalization gap? Train loss is the mean of the logged train_loss lines in the last `--last` steps (each one
batch of 64x256 random training windows); val loss is the final validation line.

    python records/2026-11-22-shakespeare-h100/gap-screen/train_vs_val.py LOG [LOG ...] [--last 100]

One row per log; a log without both a train_loss and a val_loss line, or without a train_loss line in the
last --last steps before its final validation, is named on stderr and left out.
"""
import argparse
import os
import re
import sys

LINE = re.compile(r"^step:(\d+)/(\d+) (train_loss|val_loss):([0-9.]+|nan|inf)")


class UsageError(Exception):
    """A bad command line or unreadable log: printed as one line, exit status 2."""


def read(path: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """([(step, train_loss)], [(step, val_loss)]) in log order."""
    train, val = [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = LINE.match(line)
                if m:
                    (train if m[3] == "train_loss" else val).append((int(m[1]), float(m[4])))
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror or e})") from None
    return train, val


def final_gap(train, val, last: int) -> tuple[int, float, int, float] | None:
    """(final val step, mean train loss logged in (step - last, step], how many, final val loss), or None
    when there is no val line or no train line in that range."""
    if not val:
        return None
    end = val[-1][0]
    recent = [v for s, v in train if end - last < s <= end]
    if not recent:
        return None
    return end, sum(recent) / len(recent), len(recent), val[-1][1]


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors as one line
        raise UsageError(message)


def last_steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--last={text!r}: not an integer") from None
    if value < 1:
        raise UsageError(f"--last={value}: must be >= 1")
    return value


def main(argv=None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--last", type=last_steps, default=100, help="average train losses logged in the last N steps")
    try:
        args = ap.parse_args(argv)
        runs = [(path, read(path)) for path in args.logs]
    except (UsageError, argparse.ArgumentError) as e:
        print(f"train_vs_val.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"| log | step | train loss (mean, last {args.last} steps) | val loss | val - train |")
    print("|---|---|---|---|---|")
    for path, (train, val) in runs:
        gap = final_gap(train, val, args.last)
        if gap is None:
            print(f"train_vs_val.py: {path}: no val_loss line, or no train_loss line in the {args.last} steps "
                  f"before the last one; left out", file=sys.stderr)
            continue
        end, t, n, v = gap
        print(f"| {os.path.basename(path)} | {end} | {t:.4f} (n={n}) | {v:.4f} | {v - t:+.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
