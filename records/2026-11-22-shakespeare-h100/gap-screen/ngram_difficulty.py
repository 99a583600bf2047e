"""How hard is each part of the val split, independent of our transformers: an interpolated (Witten-Bell)
character n-gram model fit on the training split (the first 90% of the text), scored on the val split's
(a) first 1,536 characters, the text the paper's final Shakespeare sweeps validate on (20 stride-1 batches of
64 windows of 256: see eval_protocols.py, paper_20x64), (b) first 3,456, the text of its earlier sweeps' 50
batches (paper_50x64), (c) first 65,536 (ours: the shakespeare preset's val_tokens), (d) all of it.

    python records/2026-11-22-shakespeare-h100/gap-screen/ngram_difficulty.py TINYSHAKESPEARE.txt \
        [--orders 2,4,6,8] [--ours-chars 65536]

Low orders generalize (bigram statistics); high orders recall long stretches of the training text, as a
model with a large train/val gap does. One row per order. --ours-chars sets (c) and the train column's
length (smaller for a small text); every prefix must fit in its split.
"""
import argparse
import math
import sys
from collections import Counter, defaultdict

TRAIN_FRACTION = 0.9  # data/shakespeare.py --input and the paper: first 90% train, last 10% val
PAPER_SEQ_LEN = 256
# the val text the paper's stride-1 validation reads: val_iters * batch window starts + seq_len tokens
PAPER_PREFIXES = {"paper 20x64": 20 * 64 + PAPER_SEQ_LEN, "paper 50x64": 50 * 64 + PAPER_SEQ_LEN}  # 1,536; 3,456


class UsageError(Exception):
    """A bad command line or input: printed as one line, exit status 2."""


def fit(text: str, order: int) -> list:
    """counts[n][context of n chars][next char] for n = 0..order, over every position of text."""
    counts = [defaultdict(Counter) for _ in range(order + 1)]
    for i in range(len(text)):
        for n in range(order + 1):
            if i - n < 0:
                break
            counts[n][text[i - n:i]][text[i]] += 1
    return counts


def log_prob(counts, vocab: int, history: str, c: str) -> float:
    """log P(c | history) under Witten-Bell interpolation from the uniform 1/vocab up to len(counts) - 1
    characters of context, stopping at the first context never seen in training."""
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


def mean_nll(counts, vocab: int, order: int, text: str, n: int) -> float:
    """Mean -log P over characters 1..n-1 of text (each given up to `order` characters before it)."""
    return sum(-log_prob(counts, vocab, text[max(0, i - order):i], text[i]) for i in range(1, n)) / (n - 1)


def split_text(text: str) -> tuple[str, str]:
    split = int(TRAIN_FRACTION * len(text))
    return text[:split], text[split:]


def parse_orders(text: str) -> list[int]:
    try:
        orders = [int(o) for o in text.split(",")]
    except ValueError:
        raise UsageError(f"--orders={text!r}: pass comma-separated whole numbers, e.g. 2,4,6,8") from None
    if not orders or min(orders) < 0:
        raise UsageError(f"--orders={text!r}: orders must be >= 0")
    return orders


def check_lengths(train: str, val: str, ours: int) -> None:
    """Every scored prefix fits in its split (and holds two characters, so a mean exists)."""
    prefixes = [*((k, v, val, "val") for k, v in PAPER_PREFIXES.items()),
                ("ours (--ours-chars)", ours, val, "val"), ("train (--ours-chars)", ours, train, "train")]
    for what, n, split, name in prefixes:
        if not 2 <= n <= len(split):
            raise UsageError(f"{what} scores the first {n:,} characters of the {name} split, which has "
                             f"{len(split):,}: use a longer text or a smaller --ours-chars")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors as one line
        raise UsageError(message)


def main(argv=None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text", help="the text (tiny Shakespeare), split 90/10 as data/shakespeare.py --input splits it")
    ap.add_argument("--orders", default="2,4,6,8", help="comma-separated n-gram orders (context chars)")
    ap.add_argument("--ours-chars", type=int, default=65536, help="length of (c) and of the train column")
    try:
        args = ap.parse_args(argv)
        orders = parse_orders(args.orders)
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{args.text}: cannot read it as UTF-8 text ({e})") from None
        train, val = split_text(text)
        check_lengths(train, val, args.ours_chars)
    except UsageError as e:
        print(f"ngram_difficulty.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    ours = args.ours_chars
    counts = fit(train, max(orders))
    vocab = len(set(text))
    prefixes = list(PAPER_PREFIXES.items())
    print(f"Witten-Bell character n-grams fit on the first 90% ({len(train):,} chars); mean NLL in nats/char of "
          f"the val split's first " + ", ".join(f"{n:,} ({k})" for k, n in prefixes)
          + f", first {ours:,} (ours), all {len(val):,}")
    print(f"| order | train (first {ours:,}) | "
          + " | ".join(f"val: {k} {n:,}" for k, n in prefixes)
          + f" | val: ours {ours:,} | val: all | " + " | ".join(f"{k} - ours" for k, _ in prefixes) + " |")
    print("|---|---|" + "---|" * (2 * len(prefixes) + 2))
    for order in orders:
        c = counts[:order + 1]
        tr = mean_nll(c, vocab, order, train, ours)
        paper = [mean_nll(c, vocab, order, val, n) for _, n in prefixes]
        o, a = mean_nll(c, vocab, order, val, ours), mean_nll(c, vocab, order, val, len(val))
        print(f"| {order} | {tr:.4f} | " + " | ".join(f"{p:.4f}" for p in paper) + f" | {o:.4f} | {a:.4f} | "
              + " | ".join(f"{p - o:+.4f}" for p in paper) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
