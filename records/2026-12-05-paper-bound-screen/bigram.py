"""The accuracy a model reaches from the current token alone: the train split's bigram table, scored on val.

    python records/2026-12-05-paper-bound-screen/bigram.py [--data data/tinyshakespeare] [--val_tokens 65536]

For every token a of the train shards, the most frequent next token b(a) in the train split; its accuracy is the
fraction of val targets t[i+1] = b(t[i]), over the first --val_tokens targets (the shakespeare preset's own
validation) and over the whole val split. Beside it, the cross-entropy of the bigram frequencies (no smoothing;
a pair never seen in train counts as probability 1e-9). A transformer whose val accuracy sits at this number
predicts from the current token only, whatever its loss.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import numpy as np  # noqa: E402

from data.shards import read_shard  # noqa: E402
from data.stream import read_vocab_size, shard_files  # noqa: E402
from tools.cli import Parser, UsageError, one_line  # noqa: E402

UNSEEN = 1e-9


def read_tokens(pattern: str, what: str, vocab: int) -> np.ndarray:
    """Every token of the shards matching pattern, in file order (int64)."""
    return np.concatenate([read_shard(path, vocab) for path in shard_files(pattern, what)]).astype(np.int64)


def bigram_counts(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """(vocab, vocab) counts of (token, next token) pairs."""
    return np.bincount(tokens[:-1] * vocab + tokens[1:], minlength=vocab * vocab).reshape(vocab, vocab).astype(float)


def score(counts: np.ndarray, tokens: np.ndarray) -> tuple[float, float]:
    """(argmax accuracy, cross-entropy in nats) of the bigram table on the targets tokens[1:]."""
    rows = counts.sum(1, keepdims=True)
    prob = np.where(counts > 0, counts / np.maximum(rows, 1), UNSEEN)
    prev, nxt = tokens[:-1], tokens[1:]
    return float((counts.argmax(1)[prev] == nxt).mean()), float(-np.log(prob[prev, nxt]).mean())


def main(argv=None) -> int:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/tinyshakespeare", help="folder of *train*.bin and *val*.bin shards")
    parser.add_argument("--val_tokens", type=int, default=65536, help="targets of the run's own validation")
    try:
        args = parser.parse(argv)
        train_glob, val_glob = os.path.join(args.data, "*train*.bin"), os.path.join(args.data, "*val*.bin")
        vocab = read_vocab_size(train_glob, 0)
        train, val = read_tokens(train_glob, "--data train", vocab), read_tokens(val_glob, "--data val", vocab)
        if not 0 < args.val_tokens < len(val):
            raise UsageError(f"--val_tokens={args.val_tokens}: must be in 1..{len(val) - 1} (the val split's targets)")
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"bigram.py: error: {one_line(e)}", file=sys.stderr)
        return 2
    counts = bigram_counts(train, vocab)
    print(f"bigram table of {len(train):,} train tokens (vocab {vocab}), argmax accuracy and cross-entropy on val:")
    for label, part in ((f"first {args.val_tokens:,} targets", val[:args.val_tokens + 1]),
                        (f"whole val split ({len(val) - 1:,} targets)", val)):
        acc, loss = score(counts, part)
        print(f"  {label}: accuracy {acc:.4f}, loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
