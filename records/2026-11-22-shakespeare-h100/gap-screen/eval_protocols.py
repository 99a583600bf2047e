"""Validation loss and accuracy of checkpoints under several evaluation protocols, to size how much of a
reported val loss is the protocol rather than the model.

    PYTHONPATH=. python records/2026-11-22-shakespeare-h100/gap-screen/eval_protocols.py CKPT [CKPT ...] \
        [--data DIR] [--random-batches 20] [--seed 0] [--json] [--protocols ours,val_all,...] [--device auto]

--data DIR: the run's shards (DIR/*train*.bin, DIR/*val*.bin, same tokenizer as the run); without it, the
shards at the train_files/val_files paths in each checkpoint's hyperparameters.

Every protocol is a set of windows of seq_len + 1 tokens (the run's seq_len) of one split; its number is
the mean next-token cross-entropy (nats/token) over every target of every window, and beside it the accuracy
(the fraction of targets that are the argmax over the real vocabulary), both summed as train_gpt.evaluate sums
them (model.eval_sums in chunks of the run's micro_batch_size, under the autocast
train_gpt would use on --device (auto: CUDA if there is one; bf16 there, as a GPU run validates), with the
run's attention window at the checkpoint's step). Protocols:
- ours:            the run's own validation: the first val_tokens of the val split in back-to-back windows
                   (train_gpt.evaluate's windows; the test checks the two agree).
- val_all:         every back-to-back window of the val split (all 111,540 tokens of tiny Shakespeare's last 10%).
- paper_20x64:     the paper's public Shakespeare code (github phess2/lipschitz-transformers,
                   experiment/train.py, experiment/data/shakespeare.py): an unshuffled loader over windows that
                   start at EVERY token of the val split (stride 1), in batches of 64, stopped after val_iters
                   batches. Its final Shakespeare sweeps (generate_sweeps.py at b725f15: 2000 steps) set
                   val_iters = 20: windows starting at tokens 0..1279, i.e. the first 1,536 tokens (characters)
                   of the val split at seq_len 256, each counted up to 256 times.
- paper_50x64:     the same with val_iters = 50, as in earlier sweeps (05442dc): starts 0..3199, the first
                   3,456 characters.
- notebook_20x512: the released notebook's evaluation, 20 stride-1 batches of 512: starts 0..10239, the
                   first 10,496 characters.
- nanogpt:         nanoGPT's estimate_loss: --random-batches batches of 64 windows at uniformly random starts
                   in the val split (numpy generator seeded with --seed).
- train:           the first val_tokens of the TRAIN split in back-to-back windows (seen in training or not, it
                   measures the train/val gap at this checkpoint).
The paper averages per-batch means; its batches are full and its windows of equal length, so that equals
the mean over all targets computed here. The stride-1 loader stops early, as the paper's does, when the
split has fewer full batches than val_iters (never on tiny Shakespeare's 111,540-token val split).

Output: a markdown table, one row per checkpoint, one column per protocol holding "loss / accuracy", then the
windows each protocol read for the first checkpoint; --json prints one JSON object instead: per checkpoint
{checkpoint, step, num_iterations, dtype, seq_len, loss: {protocol: nats}, accuracy: {protocol: fraction},
windows: {protocol: ...}}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import train_gpt  # noqa: E402
from tools.cli import Parser, UsageError, int_at_least  # noqa: E402

NANOGPT_BATCH = 64  # nanoGPT's shakespeare_char batch (and the paper's)
# name -> (val_iters, batch) of the paper's stride-1 validation
STRIDE1 = {"paper_20x64": (20, 64), "paper_50x64": (50, 64), "notebook_20x512": (20, 512)}
PROTOCOLS = ("ours", "val_all", *STRIDE1, "nanogpt", "train")


# ----------------------------------------------------------------------------- windows


def back_to_back_starts(n_windows: int, seq_len: int) -> np.ndarray:
    """(n_windows,) starts 0, seq_len, 2 seq_len, ...: windows that share only their boundary token."""
    return np.arange(n_windows, dtype=np.int64) * seq_len


def stride1_starts(val_iters: int, batch: int, n_tokens: int, seq_len: int) -> np.ndarray:
    """Starts of the windows the paper's validation reads from a split of n_tokens: its TokenDataset has
    n_tokens - seq_len - 1 windows, one at every token; an unshuffled loader batches them (drop_last) and
    validation stops after val_iters batches. -> n = min(val_iters, full batches) * batch starts 0 .. n - 1,
    whose windows read tokens 0 .. n - 1 + seq_len: the first n + seq_len tokens of the split (1,536 for 20 x 64
    at seq_len 256). ValueError when not one batch fits."""
    full_batches = (n_tokens - seq_len - 1) // batch
    if full_batches < 1:
        raise ValueError(f"a split of {n_tokens} tokens holds no full batch of {batch} stride-1 windows of "
                         f"{seq_len + 1} tokens")
    return np.arange(min(val_iters, full_batches) * batch, dtype=np.int64)


def random_starts(n_windows: int, n_tokens: int, seq_len: int, seed: int) -> np.ndarray:
    """(n_windows,) starts uniform in [0, n_tokens - seq_len), as nanoGPT's get_batch draws them: every
    window of seq_len + 1 tokens lies inside the split."""
    return np.random.default_rng(seed).integers(0, n_tokens - seq_len, size=n_windows)


def protocol_windows(hp: train_gpt.Hyperparameters, val: train_gpt.TokenStream, train: train_gpt.TokenStream,
                     random_batches: int, seed: int) -> dict[str, tuple[str, np.ndarray]]:
    """protocol -> (split "val" | "train", window starts), in PROTOCOLS order. ValueError (one line) when a
    split is too short for the run's val_tokens or for one stride-1 batch."""
    T = hp.seq_len
    windows = {"ours": ("val", back_to_back_starts(train_gpt.val_sequence_count(hp, val), T)),
               "val_all": ("val", back_to_back_starts((val.total - 1) // T, T))}
    for name, (iters, batch) in STRIDE1.items():
        windows[name] = ("val", stride1_starts(iters, batch, val.total, T))
    windows["nanogpt"] = ("val", random_starts(random_batches * NANOGPT_BATCH, val.total, T, seed))
    try:
        windows["train"] = ("train", back_to_back_starts(train_gpt.val_sequence_count(hp, train), T))
    except ValueError:  # val_sequence_count names the val split; here it is the train split that is short
        raise ValueError(f"--val_tokens={hp.val_tokens} exceeds the {train.total} tokens of the train split") from None
    return windows


def describe_windows(split: str, starts: np.ndarray, seq_len: int) -> dict:
    """How many windows, where they start, their stride (None: irregular, i.e. random; 0: one window) and the
    last token they read (inclusive)."""
    steps = np.diff(starts)
    stride = 0 if len(starts) == 1 else (int(steps[0]) if np.all(steps == steps[0]) else None)
    return dict(split=split, windows=len(starts), first_start=int(starts.min()), last_start=int(starts.max()),
                stride=stride, last_token=int(starts.max()) + seq_len)


# ----------------------------------------------------------------------------- loss


@torch.no_grad()
def loss_and_accuracy(model: train_gpt.GPT, stream: train_gpt.TokenStream, starts: np.ndarray, amp,
                      window: int) -> tuple[float, float]:
    """(mean next-token cross-entropy in nats, fraction of targets predicted by the argmax) over every target of
    the windows stream[s : s + seq_len + 1], s in starts: model.eval_sums on chunks of hp.micro_batch_size
    windows, float64 totals, as train_gpt.evaluate. The windows go to the model's device."""
    hp = model.hp
    device = model.lm_head.weight.device
    loss_total, correct_total, count = 0.0, 0, 0
    for i in range(0, len(starts), hp.micro_batch_size):
        x, y = train_gpt.token_batch(stream, starts[i:i + hp.micro_batch_size], hp.seq_len, device)
        with amp:
            loss_sum, correct, _ = model.eval_sums(x, y, train_gpt.AttentionMask(x, hp.bos_token, window))
        loss_total += loss_sum.double().item()
        correct_total += int(correct.item())
        count += y.numel()
    return loss_total / count, correct_total / count


# ----------------------------------------------------------------------------- data and checkpoints


def shard_patterns(hp: train_gpt.Hyperparameters, data: str | None) -> dict[str, str]:
    """{"train": glob, "val": glob}: DIR/*train*.bin and DIR/*val*.bin under --data, else the run's own."""
    if data is None:
        return {"train": hp.train_files, "val": hp.val_files}
    if not os.path.isdir(data):
        raise UsageError(f"--data={data}: not a directory")
    return {split: os.path.join(data, f"*{split}*.bin") for split in ("train", "val")}


def open_splits(hp: train_gpt.Hyperparameters, data: str | None, path: str) -> dict[str, train_gpt.TokenStream]:
    """The run's train and val splits as TokenStreams (tokens checked < the run's vocab_size)."""
    streams = {}
    for split, pattern in shard_patterns(hp, data).items():
        try:
            streams[split] = train_gpt.TokenStream(pattern, hp.vocab_size, split)
        except FileNotFoundError:
            where = f"--data={data}" if data else f"{path}'s {split}_files"
            raise FileNotFoundError(f"no {split} shards match {pattern!r} ({where}); pass --data=DIR holding the "
                                    f"run's *train*.bin and *val*.bin") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return streams


def evaluate_checkpoint(path: str, data: str | None, random_batches: int, seed: int,
                        protocols: tuple[str, ...] = PROTOCOLS, device: torch.device = torch.device("cpu")) -> dict:
    """{checkpoint, step, num_iterations, dtype, seq_len, loss: {protocol: nats}, accuracy: {protocol: fraction},
    windows: {protocol: describe_windows}}, for the named protocols, evaluated on `device`."""
    model, state = train_gpt.model_from_checkpoint(path)
    model = model.to(device)
    hp = model.hp
    splits = open_splits(hp, data, path)
    try:
        windows = protocol_windows(hp, splits["val"], splits["train"], random_batches, seed)
        windows = {name: windows[name] for name in protocols}
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    amp, dtype = train_gpt.autocast_for(hp, device)
    window = train_gpt.window_size(hp, state["step"])
    scores = {name: loss_and_accuracy(model, splits[split], starts, amp, window)
              for name, (split, starts) in windows.items()}
    return dict(checkpoint=path, step=state["step"], num_iterations=hp.num_iterations, dtype=dtype,
                seq_len=hp.seq_len, loss={name: loss for name, (loss, _) in scores.items()},
                accuracy={name: acc for name, (_, acc) in scores.items()},
                windows={name: describe_windows(split, starts, hp.seq_len)
                         for name, (split, starts) in windows.items()})


# ----------------------------------------------------------------------------- output


def markdown_header(protocols: tuple[str, ...] = PROTOCOLS) -> str:
    return ("| checkpoint | step | dtype | " + " | ".join(protocols) + " |\n"
            + "|---|---|---|" + "---|" * len(protocols))


def markdown_row(result: dict) -> str:
    """One checkpoint: its name, step, autocast dtype, then under each protocol "mean loss (nats/token) /
    accuracy"."""
    return (f"| {os.path.basename(result['checkpoint'])} | {result['step']} | {result['dtype']} | "
            + " | ".join(f"{loss:.4f} / {result['accuracy'][name]:.4f}" for name, loss in result["loss"].items())
            + " |")


def windows_table(result: dict) -> str:
    """Which windows each protocol read: count, starts, and the token range of the split they span."""
    lines = [f"Windows of seq_len + 1 = {result['seq_len'] + 1} tokens read by each protocol "
             f"({os.path.basename(result['checkpoint'])}):",
             "| protocol | split | windows | starts | tokens spanned |", "|---|---|---|---|---|"]
    for name, w in result["windows"].items():
        how = f"stride {w['stride']}" if w["stride"] is not None else "random"
        lines.append(f"| {name} | {w['split']} | {w['windows']} | {w['first_start']}..{w['last_start']} {how} | "
                     f"{w['first_start']}..{w['last_token']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoints written by train_gpt.py")
    ap.add_argument("--data", default=None, help="directory with the run's *train*.bin, *val*.bin "
                    "(default: the shard paths in each checkpoint's hyperparameters)")
    ap.add_argument("--random-batches", type=int_at_least("--random-batches", 1), default=20,
                    help="batches of 64 random windows for the nanogpt protocol")
    ap.add_argument("--seed", type=int_at_least("--seed", 0), default=0, help="seed of the nanogpt windows")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    ap.add_argument("--protocols", type=protocol_list, default=PROTOCOLS,
                    help=f"comma-separated subset of {','.join(PROTOCOLS)} (default: all)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where to evaluate (auto: CUDA if there is one)")
    return ap.parse(argv)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device=cuda: no CUDA device here; use --device=cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def protocol_list(text: str) -> tuple[str, ...]:
    """argparse type of --protocols: names of PROTOCOLS, comma-separated, in PROTOCOLS order."""
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise UsageError(f"--protocols={text!r}: choose from {','.join(PROTOCOLS)}")
    return tuple(n for n in PROTOCOLS if n in names)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        device = pick_device(args.device)
        if not args.json:
            print(markdown_header(args.protocols), flush=True)
        results = []
        for path in args.checkpoints:
            results.append(evaluate_checkpoint(path, args.data, args.random_batches, args.seed, args.protocols,
                                               device))
            if not args.json:
                print(markdown_row(results[-1]), flush=True)
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"eval_protocols.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dict(protocols=list(args.protocols), results=results), indent=1))
    else:
        print("\nEach cell: mean next-token loss (nats/token) / accuracy.\n\n" + windows_table(results[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
