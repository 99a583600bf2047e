"""The lm_head + cross-entropy at GPT-2's vocabulary: whole float32 logits (F.cross_entropy, autograd) against
lm_head.py's chunked loss (ChunkedLinearCrossEntropy), forward and backward, eager and torch.compile'd, side by side.

    python bench/loss.py [--tokens=4096] [--d_model=768] [--repeats=3] [--device=auto] [--chunk_mib=1024] [--compile=1]

Prints, per variant, the time of a forward+backward and the peak memory above the state before it (after one
untimed call, which compiles), and the ratios chunked/whole. On CUDA: ms from CUDA events and
torch.cuda.max_memory_allocated, with the device named. On the CPU: ms from perf_counter and the peak RSS
(VmHWM, reset through /proc/self/clear_refs before each call), each variant in its own process. The loss
values must agree (printed). --chunk_mib sets lm_head.LOSS_CHUNK_BYTES (default: lm_head's), so that a
CPU-sized token count still spans many chunks.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import lm_head  # noqa: E402

VOCAB = 50257
PADDED = lm_head.padded_vocab(VOCAB)


def whole_logits_loss(h, weight, targets, vocab_size, scale):
    """The loss as train_gpt computed it before chunking: full float32 logits, then F.cross_entropy."""
    return F.cross_entropy(lm_head.head_logits(h, weight, scale, 0.0)[:, :vocab_size], targets)


def chunked_loss(h, weight, targets, vocab_size, scale):
    chunk = lm_head.loss_chunk_tokens(h.shape[0], weight.shape[0])
    return lm_head.ChunkedLinearCrossEntropy.apply(h, weight, targets, vocab_size, scale, 0.0, chunk)


VARIANTS = {"whole": whole_logits_loss, "chunked": chunked_loss}


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak(device: torch.device) -> int:
    """Start a peak-memory measurement now; returns the baseline in bytes. CUDA: the allocator's counters.
    CPU: writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return 1024 * rss_kib("VmRSS")


def peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 1024 * rss_kib("VmHWM")


def measure(variant: str, tokens: int, d_model: int, repeats: int, device: torch.device) -> dict:
    """One variant ("whole", "chunked", or either + "-compiled") in this process, after one untimed call (which
    compiles): {"ms": median forward+backward, "peak_bytes": peak memory above the state before the call,
    "loss"}."""
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    h = torch.randn(tokens, d_model, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(PADDED, d_model, generator=g) / d_model).to(device).requires_grad_()
    targets = torch.randint(0, VOCAB, (tokens,), generator=g).to(device)
    name, _, compiled = variant.partition("-")
    fn = torch.compile(VARIANTS[name], dynamic=False) if compiled else VARIANTS[name]

    def forward_backward():
        h.grad = weight.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = fn(h, weight, targets, VOCAB, 8.0)
        loss.backward()
        return loss

    forward_backward()
    times, peaks = [], []
    for _ in range(repeats):
        h.grad = weight.grad = None
        base = reset_peak(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        loss = forward_backward()
        if device.type == "cuda":
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            times.append(1000 * (time.perf_counter() - t0))
        peaks.append(peak(device) - base)
    return dict(ms=sorted(times)[len(times) // 2], peak_bytes=max(peaks), loss=loss.item())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d_model", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--chunk_mib", type=int, default=lm_head.LOSS_CHUNK_BYTES // 2 ** 20)
    parser.add_argument("--compile", type=int, default=1, choices=(0, 1), help="1: also the torch.compile'd variants")
    parser.add_argument("--variant", help="internal: measure one variant, print JSON")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    lm_head.LOSS_CHUNK_BYTES = args.chunk_mib * 2 ** 20
    if args.variant:
        print(json.dumps(measure(args.variant, args.tokens, args.d_model, args.repeats, device)))
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"lm_head + cross-entropy, {args.tokens} tokens x d {args.d_model} -> vocab {VOCAB} (padded "
          f"{PADDED}), forward+backward, {name}, torch {torch.__version__}; chunk "
          f"{lm_head.loss_chunk_tokens(args.tokens, PADDED)} tokens", flush=True)
    results = {}
    variants = [*VARIANTS, *([f"{v}-compiled" for v in VARIANTS] if args.compile else [])]
    for variant in variants:
        cmd = [sys.executable, __file__, f"--variant={variant}", f"--tokens={args.tokens}",
               f"--d_model={args.d_model}", f"--repeats={args.repeats}", f"--device={device.type}",
               f"--chunk_mib={args.chunk_mib}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{variant} failed: {done.stderr.strip().splitlines()[-1]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"  {variant:16s} {r['ms']:9.1f} ms  peak +{r['peak_bytes'] / 2 ** 20:8.0f} MiB  loss {r['loss']:.6f}")
    for suffix in ("", "-compiled")[:1 + args.compile]:
        w, c = results["whole" + suffix], results["chunked" + suffix]
        print(f"chunked/whole{suffix}: time {c['ms'] / w['ms']:.2f}x, peak memory "
              f"{c['peak_bytes'] / max(w['peak_bytes'], 1):.2f}x, loss difference {abs(c['loss'] - w['loss']):.2e}")

if __name__ == "__main__":
    main()
