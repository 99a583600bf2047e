"""Final train loss against final val loss in speedrun-format logs: is the gap to a reported loss a
generalization gap? Train loss is the mean of the logged train_loss lines in the last `--last` steps (each one
batch of 64x256 random training windows); val loss is the final validation line.

    python records/2026-11-22-shakespeare-h100/gap-screen/train_vs_val.py LOG [LOG ...] [--last 100]
"""
import argparse
import os
import re

LINE = re.compile(r"^step:(\d+)/(\d+) (train_loss|val_loss):([0-9.]+|nan|inf)")


def read(path):
    train, val = [], []
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if m:
                (train if m[3] == "train_loss" else val).append((int(m[1]), float(m[4])))
    return train, val


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--last", type=int, default=100, help="average train losses logged in the last N steps")
    args = ap.parse_args()
    print(f"| log | step | train loss (mean, last {args.last} steps) | val loss | val - train |")
    print("|---|---|---|---|---|")
    for path in args.logs:
        train, val = read(path)
        if not train or not val:
            continue
        end = val[-1][0]
        recent = [v for s, v in train if end - args.last < s <= end]
        t = sum(recent) / len(recent)
        print(f"| {os.path.basename(path)} | {end} | {t:.4f} (n={len(recent)}) | {val[-1][1]:.4f} | {val[-1][1] - t:+.4f} |")


if __name__ == "__main__":
    main()
