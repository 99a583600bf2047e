"""Sample text from a checkpoint of train_gpt.py, decoded with the checkpoint's own tokenizer.

    python tools/sample.py checkpoints/RUN.pt [--prompt=TEXT] [--max_new_tokens=200] [--temperature=0.8]
                           [--top_k=0] [--num_samples=1] [--seed=0] [--device=auto|cpu|cuda]

Prints each sample (the prompt, when one is given, then its continuation) on stdout, samples separated by a
line of dashes, and one line about the checkpoint on stderr. Without --prompt a sample starts where a
document starts: the run's bos token (FineWeb/GPT-2: <|endoftext|>), or a newline for shards without one
(Shakespeare, whose documents are joined by blank lines). --temperature=0 is greedy decoding; --top_k=K keeps
the K most likely tokens (0 = all). The same checkpoint, flags and device give the same text: the only
randomness is a torch.Generator seeded with --seed.

Tokenizer: the record save_checkpoint stores in the checkpoint (train_gpt.tokenizer_record); for a checkpoint
older than that record, meta.json beside the run's training shards, if they are still there. Any bad input
(flag, prompt, file) is one line on stderr and exit status 2; a tokenizer that cannot be loaded here (GPT-2
without tiktoken's cached vocab files, offline) is one line and exit status 1.

No KV cache: each new token recomputes the forward pass over the (cropped) context. Measured by hand
(200 new tokens from a one-token prompt, one sample, float32, one torch thread, best of 5, on a 2-core AMD
EPYC shared with other jobs): smoke preset (d 64, 2 layers, context 64) 0.35 s; Shakespeare preset (d 256,
3 layers, context 256) 3.0 s, a step at full context 40 ms. No cache can beat 200 one-token forward passes:
0.21 s and 0.69 s. So a cache would save at most ~2.3 s per 200 tokens at the largest CPU preset, and nothing
past the context: once hp.seq_len tokens are in, cropping shifts every token's RoPE position, so cached keys
go stale and each step is a full forward pass anyway. Not worth a second attention path inside the model
(per-layer key/value buffers, position offsets, the document mask and sliding window done incrementally)
that training never exercises; recomputing runs the one forward pass that training validated.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

import train_gpt as tg  # noqa: E402
from data import shakespeare  # noqa: E402
from tools.cli import Parser, UsageError, int_at_least, one_line  # noqa: E402



# ----------------------------------------------------------------------------- tokenizer

def check_tokenizer(tokenizer: dict, hp: tg.Hyperparameters) -> None:
    """ValueError (one line) unless `tokenizer` (a train_gpt.tokenizer_record dict) names a known tokenizer whose
    vocabulary is the model's: a record from shards rebuilt after training would decode to the wrong text."""
    kind = tokenizer.get("tokenizer")
    if not kind:
        raise ValueError("the tokenizer record is empty (the run's shards did not say how they were tokenized), "
                         "so the model's tokens cannot be decoded")
    if kind not in shakespeare.TOKENIZERS:
        raise ValueError(f"tokenizer {kind!r} is not one of {', '.join(shakespeare.TOKENIZERS)}")
    vocab = tokenizer.get("vocab_size", hp.vocab_size)
    if vocab != hp.vocab_size:
        raise ValueError(f"the {kind} tokenizer has {vocab} tokens but the model {hp.vocab_size}: the tokenizer "
                         f"record does not belong to this model (were its shards rebuilt since?)")


def checkpoint_tokenizer(state: dict, hp: tg.Hyperparameters, path: str) -> dict:
    """The checkpoint's tokenizer record; for checkpoints saved before records existed, the one its training
    shards describe (train_gpt.tokenizer_record reads their meta.json). One-line ValueError when neither is
    there."""
    record = state.get("tokenizer") or {}
    if record:
        return record
    try:
        record = tg.tokenizer_record(hp.train_files, hp.vocab_size)
    except FileNotFoundError:
        raise ValueError(f"{path}: the checkpoint does not record its tokenizer (it predates tokenizer records) "
                         f"and its training shards {hp.train_files!r} are not here to tell") from None
    if not record:
        raise ValueError(f"{path}: the checkpoint does not record its tokenizer and the meta.json beside its "
                         f"training shards {hp.train_files!r} does not name one")
    return record


def prompt_tokens(prompt: str | None, encode: Callable[[str], list[int]], hp: tg.Hyperparameters) -> list[int]:
    """The prompt as token ids: `prompt` encoded as is, or, for None, the start of a document (the bos token
    when documents have one, else a newline: Shakespeare's documents are joined by blank lines). ValueError
    (one line) for an empty prompt or one longer than the model's context (hp.seq_len tokens)."""
    if prompt is None:
        if hp.bos_token >= 0:
            return [hp.bos_token]
        try:
            return encode("\n")
        except ValueError:
            raise ValueError("the vocabulary has no newline to start a document with: pass a prompt") from None
    if prompt == "":
        raise ValueError("the prompt is empty: give some text, or no prompt to start at the start of a document")
    ids = encode(prompt)
    if len(ids) > hp.seq_len:
        raise ValueError(f"the prompt is {len(ids)} tokens but the model's context is {hp.seq_len} tokens: "
                         f"shorten it")
    return ids


# ----------------------------------------------------------------------------- generation (train_gpt.generate)

def check_sampling(max_new_tokens: int, temperature: float, top_k: int, num_samples: int) -> None:
    """ValueError (one line) naming the first argument out of range."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 = greedy)")
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 = off)")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def sample_text(model: tg.GPT, tokenizer: dict, *, prompt: str | None = None, max_new_tokens: int = 200,
                temperature: float = 0.8, top_k: int = 0, num_samples: int = 1, seed: int = 0, device=None,
                window: int | None = None) -> list[str]:
    """num_samples continuations of `prompt` (None = the start of a document, see prompt_tokens), each the
    text of its max_new_tokens generated tokens only: the prompt is not included. `model` is a train_gpt.GPT
    already on `device` (default: where its weights are); `tokenizer` is its train_gpt.tokenizer_record dict.
    The same arguments on the same device give the same texts (a torch.Generator seeded with `seed`).
    Autocast on CUDA as in training (train_gpt.autocast_for); float32 on CPU, where the models are small.
    Raises ValueError (one line) for bad arguments, a prompt the tokenizer cannot encode or longer than the
    context, or a tokenizer record that does not fit the model; data.shakespeare.TokenizerUnavailable when
    the GPT-2 tokenizer cannot be loaded here."""
    hp = model.hp
    check_sampling(max_new_tokens, temperature, top_k, num_samples)
    check_tokenizer(tokenizer, hp)
    device = torch.device(device) if device is not None else model_device(model)
    encode, decode = shakespeare.encoder(tokenizer), shakespeare.decoder(tokenizer)
    ids = prompt_tokens(prompt, encode, hp)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    amp = tg.autocast_for(hp, device)[0] if device.type == "cuda" else contextlib.nullcontext()
    with amp:
        out = tg.generate(model, idx, max_new_tokens, temperature, top_k, generator, window=window)
    return [decode(row) for row in out[:, len(ids):].tolist()]


# ----------------------------------------------------------------------------- command line

def temperature_flag(text: str) -> float:
    """argparse type of --temperature: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--temperature={text!r}: not a number; pass one >= 0 (0 = greedy)") from None
    if not (value >= 0 and math.isfinite(value)):
        raise UsageError(f"--temperature={value}: must be a finite number >= 0 (0 = greedy)")
    return value


def resolve_device(name: str) -> torch.device:
    """--device: auto = CUDA when available, else the CPU; cuda where there is none is a UsageError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device=cuda: no CUDA device is available here (torch {torch.__version__}); "
                         f"use --device=cpu")
    return torch.device(name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(description=__doc__.split("\n")[0], allow_abbrev=False)  # no abbreviations: a typo is an error
    ap.add_argument("checkpoint", help="a .pt file train_gpt.py wrote")
    ap.add_argument("--prompt", default=None, help="text to continue (default: the start of a document)")
    ap.add_argument("--max_new_tokens", type=int_at_least("--max_new_tokens", 1), default=200)
    ap.add_argument("--temperature", type=temperature_flag, default=0.8, help="0 = greedy")
    ap.add_argument("--top_k", type=int_at_least("--top_k", 0), default=0, help="keep the K most likely (0 = off)")
    ap.add_argument("--num_samples", type=int_at_least("--num_samples", 1), default=1)
    ap.add_argument("--seed", type=int_at_least("--seed", 0), default=0)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return ap.parse(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        device = resolve_device(args.device)
        model, state = tg.model_from_checkpoint(args.checkpoint, "CKPT")
        hp = model.hp
        tokenizer = checkpoint_tokenizer(state, hp, args.checkpoint)
        texts = sample_text(model.to(device), tokenizer, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_k=args.top_k, num_samples=args.num_samples,
                            seed=args.seed, device=device)
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"sample.py: error: {one_line(e)}", file=sys.stderr)
        return 2
    except shakespeare.TokenizerUnavailable as e:
        print(f"sample.py: error: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"{args.checkpoint}: step {state.get('step', '?')}, arch {hp.arch}, {tokenizer['tokenizer']} tokenizer "
          f"(vocab {hp.vocab_size}), context {hp.seq_len}, {device.type}, seed {args.seed}", file=sys.stderr)
    print("\n---------------\n".join((args.prompt or "") + text for text in texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
