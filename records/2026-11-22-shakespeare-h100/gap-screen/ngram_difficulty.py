"""How hard is each part of the val split, independent of our transformers: an interpolated (Witten-Bell)
character n-gram model fit on the training split, scored on (a) the first 3,456 characters of the val split
(the text the paper's evaluation reads), (b) the first 65,536 (ours), (c) all of it.

    python records/2026-11-22-shakespeare-h100/gap-screen/ngram_difficulty.py TINYSHAKESPEARE.txt [--orders 2,4,6,8]

Low orders generalize (bigram statistics); high orders recall long stretches of the training text, as a
model with a large train/val gap does. One row per order.
"""
import argparse
import math
from collections import Counter, defaultdict


def fit(text: str, order: int):
    counts = [defaultdict(Counter) for _ in range(order + 1)]  # counts[n][context of n chars][next char]
    for i in range(len(text)):
        for n in range(order + 1):
            if i - n < 0:
                break
            counts[n][text[i - n:i]][text[i]] += 1
    return counts


def log_prob(counts, vocab: int, history: str, c: str) -> float:
    p = 1.0 / vocab
    for n in range(len(counts)):
        if n > len(history):
            break
        table = counts[n].get(history[len(history) - n:] if n else "")
        if not table:
            break
        total, distinct = sum(table.values()), len(table)
        p = (table[c] + distinct * p) / (total + distinct)
    return math.log(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("text")
    ap.add_argument("--orders", default="2,4,6,8", help="comma-separated n-gram orders (context chars)")
    args = ap.parse_args()
    orders = [int(o) for o in args.orders.split(",")]
    text = open(args.text, encoding="utf-8").read()
    split = int(0.9 * len(text))
    train, val = text[:split], text[split:]
    counts = fit(train, max(orders))
    vocab = len(set(text))
    print(f"Witten-Bell character n-grams fit on the first 90% ({len(train):,} chars); mean NLL in nats/char of "
          f"the val split's first 3,456 chars (read by the paper's evaluation), first 65,536 (ours), all {len(val):,}")
    print("| order | train (first 65,536) | val: paper's 3,456 | val: ours 65,536 | val: all | paper - ours |")
    print("|---|---|---|---|---|---|")
    for order in orders:
        c = counts[:order + 1]
        def mean_nll(t, n):
            return sum(-log_prob(c, vocab, t[max(0, i - order):i], t[i]) for i in range(1, n)) / (n - 1)
        tr, p, o, a = (mean_nll(train, 65536), mean_nll(val, 3456), mean_nll(val, 65536), mean_nll(val, len(val)))
        print(f"| {order} | {tr:.4f} | {p:.4f} | {o:.4f} | {a:.4f} | {p - o:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
