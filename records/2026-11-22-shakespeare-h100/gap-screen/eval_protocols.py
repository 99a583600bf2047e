"""Validation loss of one checkpoint under several evaluation protocols, to size how much of a reported
val loss is the protocol rather than the model.

    PYTHONPATH=. python records/2026-11-22-shakespeare-h100/gap-screen/eval_protocols.py CKPT [CKPT ...] \
        --data /tmp/h4data [--random-batches 20]

Protocols (tokens of the split named by --data's meta.json; sequences of the run's seq_len, batches of 64):
- ours:      the run's own validation: the first val_tokens of the val split in back-to-back windows.
- val_all:   every back-to-back window of the val split (all 111,540 tokens of tiny Shakespeare's last 10%).
- paper:     the paper's public Shakespeare code: an unshuffled loader over windows that start at every
             token (stride 1), averaged over its first val_iters = 50 batches of 64, i.e. windows starting at
             0..3199: the first ~3,456 characters of the val split, each counted up to 256 times.
- nanogpt:   nanoGPT's estimate_loss: windows at uniformly random starts in the val split (seed 0).
- train:     the first val_tokens of the TRAIN split in back-to-back windows (seen in training or not,
             it measures the train/val gap at this checkpoint).
Each line prints mean cross-entropy (nats/token) per protocol, computed with the run's autocast.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.append(os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
import train_gpt  # noqa: E402
from data.shards import read_shard  # noqa: E402

BATCH = 64
PAPER_VAL_ITERS = 50


def load(path: str):
    state = torch.load(path, map_location="cpu", weights_only=True)
    hp = train_gpt.Hyperparameters(**state["hp"])
    model = train_gpt.make_model(hp)
    model.load_state_dict(state["model"])
    return model.eval(), hp, state["step"]


@torch.no_grad()
def mean_loss(model, hp, tokens: np.ndarray, starts: np.ndarray) -> float:
    """Mean next-token cross-entropy over windows tokens[s : s + seq_len + 1] for s in starts."""
    amp = train_gpt.autocast_for(hp, torch.device("cpu"))
    total, count = 0.0, 0
    for i in range(0, len(starts), BATCH):
        rows = np.stack([tokens[s:s + hp.seq_len + 1] for s in starts[i:i + BATCH]]).astype(np.int64)
        buf = torch.from_numpy(rows)
        with amp:
            logits = model(buf[:, :-1])[..., :hp.vocab_size]
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), buf[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += buf[:, 1:].numel()
    return total / count


def protocols(hp, val: np.ndarray, train: np.ndarray, random_batches: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    T = hp.seq_len
    n_ours = max(1, hp.val_tokens // T)
    rng = np.random.default_rng(0)
    return {
        "ours": (val, np.arange(n_ours) * T),
        "val_all": (val, np.arange((len(val) - 1) // T) * T),
        "paper": (val, np.arange(PAPER_VAL_ITERS * BATCH)),
        "nanogpt": (val, rng.integers(0, len(val) - T - 1, size=random_batches * BATCH)),
        "train": (train, np.arange(n_ours) * T),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", required=True, help="directory with *train*.bin, *val*.bin (the run's tokenizer)")
    ap.add_argument("--random-batches", type=int, default=20, help="batches of 64 for the nanogpt protocol")
    args = ap.parse_args()
    torch.set_num_threads(1)
    shard = {}
    for split in ("train", "val"):
        files = sorted(glob.glob(os.path.join(args.data, f"*{split}*.bin")))
        if len(files) != 1:
            sys.exit(f"error: expected one {split} shard in {args.data}, found {len(files)}")
        shard[split] = np.asarray(read_shard(files[0]))
    names = list(protocols(train_gpt.Hyperparameters(), shard["val"], shard["train"], 1))
    print("| checkpoint | step | " + " | ".join(names) + " | paper - ours | ours - train |")
    print("|---|---|" + "---|" * (len(names) + 2))
    for path in args.checkpoints:
        model, hp, step = load(path)
        res = {k: mean_loss(model, hp, toks, starts)
               for k, (toks, starts) in protocols(hp, shard["val"], shard["train"], args.random_batches).items()}
        print(f"| {os.path.basename(path)} | {step} | " + " | ".join(f"{res[k]:.4f}" for k in names)
              + f" | {res['paper'] - res['ours']:+.4f} | {res['ours'] - res['train']:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
