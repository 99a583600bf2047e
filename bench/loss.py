"""The lm_head + cross-entropy at GPT-2's vocabulary: whole float32 logits (F.cross_entropy, autograd) against
train_gpt's chunked loss (ChunkedLinearCrossEntropy), forward and backward, side by side.

    python bench/loss.py [--tokens=4096] [--d_model=768] [--repeats=3] [--device=auto] [--chunk_mib=1024]

Prints, per variant, the time of a forward+backward and the peak memory it added, and the ratios chunked/whole.
On CUDA: ms from CUDA events and torch.cuda.max_memory_allocated, with the device named. On the CPU: ms from
perf_counter and the growth of the process's peak RSS (VmHWM), each variant in its own process so that one's
peak does not hide the other's. The loss values of the two must agree (printed). --chunk_mib sets
train_gpt.LOSS_CHUNK_BYTES (default: train_gpt's), so that a CPU-sized token count still spans many chunks.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train_gpt as tg  # noqa: E402

VOCAB = 50257
PADDED = tg.padded_vocab(VOCAB)


def whole_logits_loss(h, weight, targets, vocab_size, scale):
    """The loss as train_gpt computed it before chunking: full float32 logits, then F.cross_entropy."""
    return F.cross_entropy(tg.head_logits(h, weight, scale, 0.0)[:, :vocab_size], targets)


def chunked_loss(h, weight, targets, vocab_size, scale):
    chunk = tg.loss_chunk_tokens(weight.shape[0])
    return tg.ChunkedLinearCrossEntropy.apply(h, weight, targets, vocab_size, scale, 0.0, chunk)


VARIANTS = {"whole": whole_logits_loss, "chunked": chunked_loss}


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def measure(variant: str, tokens: int, d_model: int, repeats: int, device: torch.device) -> dict:
    """One variant in this process: {"ms": median forward+backward, "peak_bytes": memory it added, "loss"}."""
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    h = torch.randn(tokens, d_model, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(PADDED, d_model, generator=g) / d_model).to(device).requires_grad_()
    targets = torch.randint(0, VOCAB, (tokens,), generator=g).to(device)
    fn = VARIANTS[variant]
    times, loss = [], None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = peak_rss()
    for _ in range(repeats):
        h.grad = weight.grad = None
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = fn(h, weight, targets, VOCAB, 8.0)
        loss.backward()
        if device.type == "cuda":
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            times.append(1000 * (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    return dict(ms=sorted(times)[len(times) // 2], peak_bytes=peak - base, loss=loss.item())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d_model", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--chunk_mib", type=int, default=tg.LOSS_CHUNK_BYTES // 2 ** 20)
    parser.add_argument("--variant", choices=tuple(VARIANTS), help="internal: measure one variant, print JSON")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    tg.LOSS_CHUNK_BYTES = args.chunk_mib * 2 ** 20
    if args.variant:
        print(json.dumps(measure(args.variant, args.tokens, args.d_model, args.repeats, device)))
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"lm_head + cross-entropy, {args.tokens} tokens x d {args.d_model} -> vocab {VOCAB} (padded "
          f"{PADDED}), forward+backward, {name}, torch {torch.__version__}; chunk "
          f"{tg.loss_chunk_tokens(PADDED)} tokens", flush=True)
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, f"--variant={variant}", f"--tokens={args.tokens}",
               f"--d_model={args.d_model}", f"--repeats={args.repeats}", f"--device={device.type}",
               f"--chunk_mib={args.chunk_mib}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{variant} failed: {done.stderr.strip().splitlines()[-1]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"  {variant:8s} {r['ms']:9.1f} ms  peak +{r['peak_bytes'] / 2 ** 20:8.0f} MiB  loss {r['loss']:.6f}")
    w, c = results["whole"], results["chunked"]
    print(f"chunked/whole: time {c['ms'] / w['ms']:.2f}x, peak memory {c['peak_bytes'] / max(w['peak_bytes'], 1):.2f}x, "
          f"loss difference {abs(c['loss'] - w['loss']):.2e}")


if __name__ == "__main__":
    main()
