"""Next-token accuracy of checkpoints under an attack on the embedding output, and certified, against eps.

    python tools/robustness.py CKPT [CKPT ...] [--eps=0.01,0.03,0.1] [--tokens=4096] [--restarts=2] [--steps=20]
        [--dtype=float32|float64] [--data=DIR] [--batch=16] [--seed=0] [--ratio] [--json]

What is perturbed. f = GPT.logits_from_embeddings: embedding output x (B, T, d) -> logits (B, T, V_pad), the map
lipschitz.py certifies, with the run's own validation mask (train_gpt.AttentionMask, the window at the
checkpoint's step). The attacker adds delta (B, T, d) to x with every position's RMS over d at most eps:
||delta||_inf-RMS <= eps, the certificate's input norm (lipschitz.inf_rms: max over tokens of the per-token RMS).
Every position is perturbed at once; attention mixes positions, so delta_s moves the logits at every t >= s.

Which tokens. The first --tokens of the val split (the shards the checkpoint's val_files name, or DIR/*val*.bin),
in back-to-back windows of the run's seq_len, as train_gpt.evaluate reads them (--tokens = the run's val_tokens
gives its val_acc), rounded down to whole windows. Accuracy is always against the true next token y over the
real vocabulary (logits[..., :vocab_size], train_gpt's argmax). A token wrong when clean stays wrong (delta = 0 is
in the ball); on a token right when clean, the true token and the model's clean prediction are the same, so
"attack the prediction" and "attack the target" are one goal there.

Certified accuracy: derivation of the margin bound. lipschitz.certified_bound(model, radius=R) = L certifies
    ||f(x1) - f(x2)||_inf-RMS <= L ||x1 - x2||_inf-RMS   for all x1, x2 (one sequence each) with ||.||_inf-RMS <= R,
the output norm being the max over positions t of RMS over all V_pad logits of position t (padding included).
  1. Domain. Every embedding output has token RMS <= r = the largest row RMS of the embedding (<= emb_w_max for
     the lipschitz arch), so x + delta has token RMS <= r + eps (triangle inequality of the RMS). Both lie in the
     ball of radius R = r + eps, so L = certified_bound(model, "sharp", radius=r + eps) applies (the bound grows
     with R: attention's Lipschitz constant scales with the activation size).
  2. Positions. For every position t, RMS_v(f(x+delta)_t - f(x)_t) <= ||f(x+delta) - f(x)||_inf-RMS <= L eps, for
     the one delta perturbing all positions: the certificate's max over input positions already carries every
     position's influence on every logit, so all positions are certified at once (and, a fortiori, against a
     delta chosen separately for each target token).
  3. Vocabulary. ||dz_t||_2 = sqrt(V_pad) RMS_v(dz_t) <= sqrt(V_pad) L eps (V_pad = lm_head rows; the real
     logits are a sub-vector, so their l2 change is no larger).
  4. Margin. m_t = z_y - max_{j != y, j < vocab_size} z_j. For each j, |d(z_y - z_j)| = |<dz_t, e_y - e_j>|
     <= ||e_y - e_j||_2 ||dz_t||_2 = sqrt(2) ||dz_t||_2, so m_t moves by at most
         M(eps) = sqrt(2 V_pad) L eps.
A token is certified at eps when it is right when clean and m_t > M(eps): no delta of budget eps can flip it.
A clean margin is computed in float; M(eps) dwarfs its rounding for every model here (L >= 1 in practice).

The attack (PGD with restarts, float32 or float64). For each eps, ascending, and each sequence, --steps steps per
restart, each the steepest-ascent step of the inf-RMS ball (each position's gradient scaled to RMS alpha = 2.5 eps /
steps, the l_inf-PGD rule per position), projected back to every position's RMS <= eps (lipschitz.project_to_ball),
on the tokens still unflipped (right when clean, not yet flipped by any iterate). Restart 0 starts at delta = 0 and
ascends sum_t (max_{j != y} z_j - z_y); the others ascend the soft minimum of the margins (restart 1 from delta = 0,
later ones from a random point of the ball: a Gaussian direction per token, RMS eps * U(0,1)), which spends the one
delta of a sequence on the tokens nearest to flipping (pgd_attack says why and what it gains). A token counts as
flipped when ANY iterate of ANY restart (start and after every step) makes its argmax wrong, or when it was flipped
at a smaller eps (that delta is in this larger ball too): the attacked accuracy is the fraction that no perturbation
found flips, an upper bound on the true robust accuracy, as the certified accuracy is a lower bound. Hence certified
<= true robust <= attacked <= clean; a certified token flipped by the attack would disprove the certificate
(reported UNSOUND, exit 1). The largest margin drop found (clean margin minus the smallest margin reached, over
right-when-clean tokens) is an empirical lower bound on max |dm|, so it is <= M(eps) too.

--ratio: empirical Lipschitz lower bounds in the certificate's own norms, from the val text. ratio_attack starts
at the embedding outputs of the first windows and ascends log ||g(x2) - g(x1)||_inf-RMS / ||x2 - x1||_inf-RMS by
Adam, moving both points (x1 projected into the ball ||.||_inf-RMS <= (1 - e) R, x2 = x1 + a perturbation with
every token's RMS exactly e R, so both stay in the ball of the default certificate, R = emb_w_max), e cycling
through RATIO_SCALES. g is each map lipschitz.bound_report certifies: embedding -> output of block k (its
log10_cum_sharp) and embedding -> logits (the sharp bound). Every ratio found must stay <= its bound; the first
blocks' bounds are nearly attained, so they test the certificate with little slack (see prefix_maps).

Output: a markdown table, one row per checkpoint and eps; --json: one JSON object
{"eps": [...], "results": [{"checkpoint", "step", "num_iterations", "arch", "run_id", "constraint", "w_max",
"optimizer", "tokens", "dtype", "radius" (r), "log10_bound_sharp" (at radius r), "rows": [{"eps",
"clean", "attacked", "certified", "bound_sharp", "log10_bound_sharp", "margin_bound", "max_margin_drop",
"certified_but_flipped", ...}], "ratio": {...} (with --ratio)}]} (non-finite floats as null). Progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import lipschitz  # noqa: E402
import train_gpt as tg  # noqa: E402
from tools.cli import Parser, UsageError, int_at_least, one_line  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}
PGD_STEP_SCALE = 2.5  # step RMS = 2.5 eps / steps: the l_inf-PGD rule (Madry et al. 2018), enough to cross the ball
SOFTMIN_DIVISOR = 6.0  # soft-min temperature = largest margin drop / 6: best of D/3, D/6, D/12 measured (pgd_attack)
# relative perturbation sizes of --ratio's restarts: the local Jacobian, then larger moves
RATIO_SCALES = (1e-3, 1e-1, 1e-2)


# ----------------------------------------------------------------------------------------------
# Margins and the certificate


def margins(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, margin), each (B, T), of logits (B, T, V_pad) against targets (B, T) over the real vocabulary
    logits[..., :vocab_size]: correct = (argmax == target), train_gpt's accuracy (ties go to the lower index);
    margin = z_y - max_{j != y} z_j (> 0 implies correct). Differentiable in the logits."""
    z = logits[..., :vocab_size]
    correct = z.argmax(-1) == targets
    z_y = z.gather(-1, targets[..., None]).squeeze(-1)
    is_y = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, targets[..., None], True)
    return correct, z_y - z.masked_fill(is_y, -math.inf).amax(-1)


def margin_change_bound(lipschitz_bound: float, eps: float, padded_vocab: int) -> float:
    """M(eps) = sqrt(2 V_pad) L eps: the most any logit margin z_y - z_j can move under a perturbation of
    ||.||_inf-RMS <= eps, for L certified in inf-RMS over (positions, V_pad logits) (derivation: module docstring).
    math.inf when L is."""
    return math.sqrt(2 * padded_vocab) * lipschitz_bound * eps


def embedding_radius(model: torch.nn.Module) -> float:
    """The largest row RMS of the embedding (float64): every embedding output lies in the inf-RMS ball of it."""
    return model.embed.weight.detach().double().square().mean(-1).sqrt().max().item()


def certificate(model: torch.nn.Module, radius: float) -> dict:
    """The sharp certified bound of model.logits_from_embeddings on the ball ||x||_inf-RMS <= radius:
    {"bound_sharp": L (math.inf if it overflows or the arch has none), "log10_bound_sharp", "reason"}."""
    rep = lipschitz.bound_report(model, radius)
    return dict(bound_sharp=rep["bound_sharp"], log10_bound_sharp=rep["log10_bound_sharp"], reason=rep["reason"])


# ----------------------------------------------------------------------------------------------
# The attack


def random_in_ball(shape, eps: float, gen: torch.Generator, dtype) -> torch.Tensor:
    """(..., d) perturbation with each token's RMS eps * U(0, 1) in a Gaussian direction."""
    z = torch.randn(*shape, generator=gen, dtype=dtype)
    u = torch.rand(*shape[:-1], 1, generator=gen, dtype=dtype)
    return eps * u * z / z.square().mean(-1, keepdim=True).sqrt().clamp_min(1e-30)


def steepest_step(grad: torch.Tensor, size: float) -> torch.Tensor:
    """argmax of <grad, v> over ||v||_inf-RMS <= size: each token's gradient scaled to RMS size (zero stays zero)."""
    return size * grad / grad.square().mean(-1, keepdim=True).sqrt().clamp_min(1e-30)


@dataclass
class AttackResult:
    """Per token (B, T): flipped (some iterate made the argmax wrong; only right-when-clean tokens) and the
    smallest margin any iterate reached (the clean margin where nothing went lower)."""
    flipped: torch.Tensor
    min_margin: torch.Tensor


def attack_objective(m: torch.Tensor, active: torch.Tensor, tau: float | None) -> torch.Tensor:
    """What a PGD step ascends, from the margins m (B, T) of the tokens still `active`: tau None, the sum of
    their margins negated (every token pulls equally); else the soft minimum tau logsumexp(-m / tau), whose
    gradient weights each token by softmax(-m / tau), so the tokens nearest to flipping steer the shared delta
    (stable for any tau: no exp overflows)."""
    if tau is None:
        return -(m * active).sum()
    return tau * torch.logsumexp((-m / tau).masked_fill(~active, -math.inf).flatten(), 0)


def pgd_attack(f, x: torch.Tensor, targets: torch.Tensor, correct: torch.Tensor, clean_margin: torch.Tensor,
               vocab_size: int, eps: float, restarts: int, steps: int, gen: torch.Generator,
               already_flipped: torch.Tensor | None = None) -> AttackResult:
    """PGD on the embedding output within ||delta||_inf-RMS <= eps (module docstring). f: x (B, T, d) -> logits;
    x, targets, correct, clean_margin as from margins() on f(x). already_flipped: tokens flipped at a smaller eps
    (kept flipped, and left out of the objective).

    Restart 0 starts at delta = 0 and ascends the summed margins; it measures D, the largest margin drop this
    budget buys. The others ascend the soft minimum of the margins at temperature D / SOFTMIN_DIVISOR (restart 1
    from delta = 0, the rest from random points of the ball): one delta serves every position of a sequence, and
    the sum spends it on tokens that cannot flip. (Measured on the w_max 2 protocol checkpoint at step 450, 4
    windows: the soft minimum flips 20-50% more tokens than the sum at eps 0.003-0.03, and 11 of the 12 of 40
    sampled tokens that a single-token attack flips, against 7 for the sum.) An iterate whose logits are not
    finite flips nothing."""
    flipped = torch.zeros_like(correct) if already_flipped is None else already_flipped.clone()
    min_margin = clean_margin.detach().clone()
    alpha = PGD_STEP_SCALE * eps / steps
    for restart in range(restarts):
        largest_drop = (clean_margin - min_margin)[correct].max().item() if bool(correct.any()) else 0.0
        tau = None if restart == 0 or largest_drop <= 0 else largest_drop / SOFTMIN_DIVISOR
        delta = torch.zeros_like(x) if restart <= 1 else random_in_ball(x.shape, eps, gen, x.dtype)
        for step in range(steps + 1):
            delta.requires_grad_(True)
            now_correct, m = margins(f(x + delta), targets, vocab_size)
            with torch.no_grad():
                seen = correct & torch.isfinite(m)
                flipped |= seen & ~now_correct
                min_margin = torch.minimum(min_margin, torch.where(seen, m, min_margin))
            active = correct & ~flipped
            if step == steps or not bool(active.any()) or not bool(torch.isfinite(m).all()):
                break
            (grad,) = torch.autograd.grad(attack_objective(m, active, tau), delta)
            with torch.no_grad():
                delta = lipschitz.project_to_ball(delta + steepest_step(grad, alpha), eps)
        if not bool((correct & ~flipped).any()):
            break
    return AttackResult(flipped, min_margin)


# ----------------------------------------------------------------------------------------------
# Empirical Lipschitz lower bound (--ratio)


def ratio_pair(z1: torch.Tensor, z2: torch.Tensor, e: float, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair ratio_attack scores from its free parameters: x1 = z1 projected into the ball of radius (1 - e) R,
    x2 = x1 + z2 scaled to token RMS exactly e R. Both lie in the ball ||.||_inf-RMS <= R = radius."""
    x1 = lipschitz.project_to_ball(z1, radius * (1 - e))
    return x1, x1 + e * radius * z2 / z2.square().mean(-1, keepdim=True).sqrt().clamp_min(1e-30)


def change_ratio(f, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """(B,) ||f(x2) - f(x1)||_inf-RMS / ||x2 - x1||_inf-RMS per sequence (lipschitz.inf_rms on both sides)."""
    return lipschitz.inf_rms(f(x2) - f(x1)) / lipschitz.inf_rms(x2 - x1)


def ratio_attack(f, x: torch.Tensor, radius: float, restarts: int, steps: int, gen: torch.Generator,
                 lr: float = 0.05) -> dict:
    """Largest ||f(x2) - f(x1)||_inf-RMS / ||x2 - x1||_inf-RMS found (per sequence; x (B, T, d), the start of x1)
    with x1, x2 in the ball ||.||_inf-RMS <= radius: Adam on the log ratio with a cosine-decayed lr, restart k at
    relative size e = RATIO_SCALES[k % 3] (ratio_pair, as lipschitz.worst_pair). x1 moves at lr * radius per step,
    far enough to leave the text's own operating point (whose local slope is far below the worst one nearby:
    ~9 against ~160 on the d 64 w_max 2 fixture); the perturbation's direction z2 (unit scale) at lr.
    -> {"ratio", "per_restart": [(e, best ratio)]}, a lower bound on the Lipschitz constant of f on that ball.
    Use float64: at e = 1e-3 a float32 f(x2) - f(x1) keeps about 4 significant digits."""
    best, per_restart = 0.0, []
    for restart in range(restarts):
        e = RATIO_SCALES[restart % len(RATIO_SCALES)]
        z1 = x.detach().clone().requires_grad_(True)
        z2 = torch.randn(x.shape, generator=gen, dtype=x.dtype).requires_grad_(True)
        opt = torch.optim.Adam([{"params": [z1], "lr": lr * radius}, {"params": [z2], "lr": lr}])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
        run_best = 0.0
        for _ in range(steps):
            ratios = change_ratio(f, *ratio_pair(z1, z2, e, radius))
            run_best = max(run_best, ratios.max().item())
            opt.zero_grad(set_to_none=True)
            (-ratios.clamp_min(1e-300).log().sum()).backward()
            opt.step()
            sched.step()
        with torch.no_grad():  # the last iterate too
            run_best = max(run_best, change_ratio(f, *ratio_pair(z1, z2, e, radius)).max().item())
        per_restart.append((e, run_best))
        best = max(best, run_best)
    return dict(ratio=best, per_restart=per_restart)


# ----------------------------------------------------------------------------------------------
# Data and checkpoints


def val_stream(hp: tg.Hyperparameters, data: str | None, path: str) -> tg.TokenStream:
    """The run's val split: DIR/*val*.bin under --data, else the checkpoint's val_files."""
    if data is not None and not os.path.isdir(data):
        raise UsageError(f"--data={data}: not a directory; pass the folder holding the run's *val*.bin")
    pattern = os.path.join(data, "*val*.bin") if data is not None else hp.val_files
    try:
        return tg.TokenStream(pattern, hp.vocab_size, "val")
    except FileNotFoundError:
        where = f"--data={data}" if data else f"{path}'s val_files"
        raise FileNotFoundError(f"no val shards match {pattern!r} ({where}); pass --data=DIR holding the run's "
                                f"*val*.bin") from None
    except ValueError as e:
        raise ValueError(f"{path}: {one_line(e)}") from None


def window_starts(tokens: int, seq_len: int, split_tokens: int) -> np.ndarray:
    """Starts of the back-to-back windows of seq_len + 1 tokens covering the first `tokens` targets of a split
    (rounded down to whole windows, as train_gpt.val_sequence_count). UsageError naming --tokens when there is
    not one window, or the split is too short."""
    n = tokens // seq_len
    if n < 1:
        raise UsageError(f"--tokens={tokens}: less than one window of the run's seq_len {seq_len}; pass "
                         f"--tokens >= {seq_len}")
    if n * seq_len + 1 > split_tokens:
        raise UsageError(f"--tokens={tokens} exceeds the {split_tokens} tokens of the val split; pass at most "
                         f"{(split_tokens - 1) // seq_len * seq_len}")
    return np.arange(n, dtype=np.int64) * seq_len


def checkpoint_model(path: str, dtype: torch.dtype) -> tuple[tg.GPT, dict]:
    """(model in eval mode on the CPU in `dtype`, no parameter gradients; checkpoint dict)."""
    model, state = tg.model_from_checkpoint(path)
    return model.to(dtype).requires_grad_(False).eval(), state


# ----------------------------------------------------------------------------------------------
# One checkpoint


def _say(progress, text: str) -> None:
    if progress:
        print(f"robustness.py: {text}", file=sys.stderr, flush=True)


def _finite_or_none(v):
    return v if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float) else v)


def evaluate_checkpoint(path: str, eps_list: tuple[float, ...], tokens: int, restarts: int, steps: int,
                        dtype: str = "float32", data: str | None = None, batch: int = 16, seed: int = 0,
                        ratio: bool = False, ratio_steps: int = 200, progress: bool = True) -> dict:
    """Clean, attacked and certified accuracy of one checkpoint at each eps (ascending), plus with ratio the
    empirical Lipschitz lower bound from the val text. The returned dict is what --json prints per checkpoint."""
    t0 = time.perf_counter()
    model, state = checkpoint_model(path, DTYPES[dtype])
    hp = model.hp
    val = val_stream(hp, data, path)
    starts = window_starts(tokens, hp.seq_len, val.total)
    window = tg.window_size(hp, state["step"])
    V, V_pad = hp.vocab_size, model.lm_head.weight.shape[0]
    r = embedding_radius(model)
    eps_sorted = sorted(eps_list)
    certs = {eps: certificate(model, r + eps) for eps in eps_sorted}
    gen = torch.Generator().manual_seed(seed)
    n_tok = 0
    counts = {eps: dict(attacked=0, certified=0, certified_but_flipped=0, max_margin_drop=0.0) for eps in eps_sorted}
    n_correct = 0
    name = os.path.basename(path)
    for b, i in enumerate(range(0, len(starts), batch)):
        idx, y = tg.token_batch(val, starts[i:i + batch], hp.seq_len, torch.device("cpu"))
        mask = tg.AttentionMask(idx, hp.bos_token, window)
        x = model.embed(idx).detach()

        def f(inp, mask=mask):
            return model.logits_from_embeddings(inp, mask)

        with torch.no_grad():
            correct, clean_margin = margins(f(x), y, V)
        n_tok += y.numel()
        n_correct += int(correct.sum())
        flipped = None
        for eps in eps_sorted:
            res = pgd_attack(f, x, y, correct, clean_margin, V, eps, restarts, steps, gen, flipped)
            flipped = res.flipped
            M = margin_change_bound(certs[eps]["bound_sharp"], eps, V_pad)
            certified = correct & (clean_margin > M)
            c = counts[eps]
            c["attacked"] += int((correct & ~flipped).sum())
            c["certified"] += int(certified.sum())
            c["certified_but_flipped"] += int((certified & flipped).sum())
            drop = (clean_margin - res.min_margin)[correct]
            c["max_margin_drop"] = max(c["max_margin_drop"], drop.max().item() if drop.numel() else 0.0)
            _say(progress, f"{name}: windows {i + 1}-{min(i + batch, len(starts))} of {len(starts)}, eps {eps:g}: "
                           f"{int((correct & ~flipped).sum())} of {int(correct.sum())} right tokens unflipped "
                           f"({time.perf_counter() - t0:.0f}s)")
    rows = []
    for eps in eps_sorted:
        c, cert = counts[eps], certs[eps]
        M = margin_change_bound(cert["bound_sharp"], eps, V_pad)
        rows.append(dict(eps=eps, clean=n_correct / n_tok, attacked=c["attacked"] / n_tok,
                         certified=c["certified"] / n_tok, certified_but_flipped=c["certified_but_flipped"],
                         bound_sharp=cert["bound_sharp"], log10_bound_sharp=cert["log10_bound_sharp"],
                         margin_bound=M, max_margin_drop=c["max_margin_drop"],
                         drop_over_margin_bound=c["max_margin_drop"] / M if M > 0 else None,
                         bound_reason=cert["reason"]))
    out = dict(checkpoint=path, step=state["step"], num_iterations=hp.num_iterations, arch=hp.arch, run_id=hp.run_id,
               constraint=hp.constraint, w_max=hp.w_max, optimizer=hp.optimizer, tokens=n_tok, dtype=dtype,
               radius=r, padded_vocab=V_pad, vocab_size=V, window=window, restarts=restarts, steps=steps,
               log10_bound_sharp=certificate(model, r)["log10_bound_sharp"], seconds=time.perf_counter() - t0,
               rows=rows)
    if ratio:
        out["ratio"] = ratio_on_text(model, val, starts, window, restarts=max(restarts, len(RATIO_SCALES)),
                                     steps=ratio_steps, batch=min(batch, 4), gen=gen)
        _say(progress, f"{name}: ratio attack {out['ratio']['ratio']:.4g} = 10^{out['ratio']['log10_tightness']:.2f}"
                       f" of the sharp bound ({time.perf_counter() - t0:.0f}s)")
    return out


def prefix_maps(model: tg.GPT, mask: tg.AttentionMask, report: dict) -> list[tuple[str, object, float]]:
    """(name, map x (B, T, d) -> output, log10 of its certified bound) for every map bound_report certifies, in
    inf-RMS on both sides: embedding output -> output of block k (log10_cum_sharp of layer k), for each k, then
    -> logits (log10_bound_sharp). The prefixes test each block's share of the bound with far less slack than
    the whole model: a bound too small anywhere shows up at the first block where it is."""
    def through(k):
        def f(x):
            for block in model.blocks[:k + 1]:
                x = block(x, mask)
            return x
        return f

    maps = [(f"block {k}", through(k), row["log10_cum_sharp"]) for k, row in enumerate(report["layers"])]
    return maps + [("logits", lambda x: model.logits_from_embeddings(x, mask), report["log10_bound_sharp"])]


def ratio_on_text(model: tg.GPT, val: tg.TokenStream, starts: np.ndarray, window: int, restarts: int, steps: int,
                  batch: int, gen: torch.Generator) -> dict:
    """ratio_attack from the embedding outputs of the first `batch` windows, on every map of prefix_maps, against
    the default certificate (the sharp bounds on the ball of radius emb_w_max, or of the largest embedding row RMS
    if that is larger). -> {"ratio", "log10_tightness" (of the whole map), "maps": [per map: name, ratio,
    log10_bound, log10_tightness = log10(ratio / bound), per_restart], ...}."""
    hp = model.hp
    idx, _ = tg.token_batch(val, starts[:batch], hp.seq_len, torch.device("cpu"))
    mask = tg.AttentionMask(idx, hp.bos_token, window)
    radius = max(float(hp.emb_w_max), embedding_radius(model))
    report = lipschitz.bound_report(model, radius)
    x = model.embed(idx).detach()
    maps = []
    for name, f, log10_bound in prefix_maps(model, mask, report):
        found = ratio_attack(f, x, radius, restarts, steps, gen)
        log10_ratio = math.log10(found["ratio"]) if found["ratio"] > 0 else -math.inf
        maps.append(dict(found, name=name, log10_bound=log10_bound, log10_tightness=log10_ratio - log10_bound))
    whole = maps[-1]
    return dict(ratio=whole["ratio"], log10_bound_sharp=whole["log10_bound"], log10_tightness=whole["log10_tightness"],
                maps=maps, radius=radius, steps=steps, restarts=restarts, sequences=int(idx.shape[0]))


# ----------------------------------------------------------------------------------------------
# Output


def fmt_bound(log10_value: float) -> str:
    if not math.isfinite(log10_value):
        return "inf"
    return f"{10 ** log10_value:.3g}" if log10_value < 4 else f"10^{log10_value:.2f}"


def markdown_table(results: list[dict]) -> str:
    """One row per checkpoint and eps: accuracies (fractions of the scored tokens), the sharp bound on the ball
    of radius r + eps, the margin bound M(eps) and the largest margin drop the attack found."""
    lines = ["| checkpoint | step | eps | clean | attacked | certified | sharp bound at r+eps | margin bound M "
             "| largest margin drop found |", "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for row in res["rows"]:
            M = row["margin_bound"]
            lines.append(f"| {os.path.basename(res['checkpoint'])} | {res['step']} | {row['eps']:g} | "
                         f"{row['clean']:.4f} | {row['attacked']:.4f} | {row['certified']:.4f} | "
                         f"{fmt_bound(row['log10_bound_sharp'])} | {M:.3g} | {row['max_margin_drop']:.3g} |")
    return "\n".join(lines)


def ratio_lines(results: list[dict]) -> list[str]:
    """Per checkpoint and certified map: the largest ratio found, the sharp bound, and their quotient."""
    return [f"{os.path.basename(r['checkpoint'])}: embedding -> {m['name']}: largest ratio found {m['ratio']:.4g}, "
            f"sharp bound {fmt_bound(m['log10_bound'])}, ratio / bound = 10^{m['log10_tightness']:.2f}"
            for r in results if "ratio" in r for m in r["ratio"]["maps"]]


def json_safe(obj):
    """obj with every non-finite float replaced by None (JSON has no inf or nan)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return _finite_or_none(obj)


def unsound(results: list[dict]) -> list[str]:
    """What disproves the certificate: a certified token flipped, a margin moved more than M(eps), a ratio above
    the bound (each with a relative slack of 1e-6 for float rounding)."""
    bad = []
    for res in results:
        name = os.path.basename(res["checkpoint"])
        for row in res["rows"]:
            if row["certified_but_flipped"]:
                bad.append(f"{name} eps {row['eps']:g}: {row['certified_but_flipped']} certified token(s) flipped")
            if row["max_margin_drop"] > row["margin_bound"] * (1 + 1e-6):
                bad.append(f"{name} eps {row['eps']:g}: margin drop {row['max_margin_drop']:.6g} > "
                           f"M {row['margin_bound']:.6g}")
        for m in res.get("ratio", {}).get("maps", []):
            if m["log10_tightness"] > math.log10(1 + 1e-6):
                bad.append(f"{name}: embedding -> {m['name']}: ratio {m['ratio']:.6g} > sharp bound "
                           f"10^{m['log10_bound']:.4f}")
    return bad


# ----------------------------------------------------------------------------------------------
# Command line


def eps_list(text: str) -> tuple[float, ...]:
    """argparse type of --eps: comma-separated positive finite numbers, returned ascending without repeats."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--eps={text!r}: not a comma-separated list of numbers; e.g. --eps=0.01,0.03,0.1") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise UsageError(f"--eps={text!r}: every budget must be a finite number > 0; e.g. --eps=0.01,0.03,0.1")
    return tuple(sorted(set(values)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoints written by train_gpt.py")
    ap.add_argument("--eps", type=eps_list, default=(0.01, 0.03, 0.1),
                    help="budgets: per-token RMS of the perturbation of the embedding output (comma-separated)")
    ap.add_argument("--tokens", type=int_at_least("--tokens", 1), default=4096,
                    help="val tokens scored (the first ones, in whole windows of the run's seq_len)")
    ap.add_argument("--restarts", type=int_at_least("--restarts", 1), default=2, help="PGD restarts per eps")
    ap.add_argument("--steps", type=int_at_least("--steps", 1), default=20, help="PGD steps per restart")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="arithmetic of the model and attack")
    ap.add_argument("--data", default=None, help="directory with the run's *val*.bin (default: the checkpoint's "
                    "val_files)")
    ap.add_argument("--batch", type=int_at_least("--batch", 1), default=16, help="windows attacked together")
    ap.add_argument("--seed", type=int_at_least("--seed", 0), default=0, help="seed of the random restarts")
    ap.add_argument("--ratio", action="store_true", help="also search for the largest output/input change ratio "
                    "from the val text (an empirical Lipschitz lower bound) against the certified bound")
    ap.add_argument("--ratio-steps", type=int_at_least("--ratio-steps", 1), default=200,
                    help="Adam steps per restart of the --ratio search")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return ap.parse(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        results = []
        for path in args.checkpoints:
            results.append(evaluate_checkpoint(path, args.eps, args.tokens, args.restarts, args.steps, args.dtype,
                                               args.data, args.batch, args.seed, args.ratio, args.ratio_steps))
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"robustness.py: error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_safe(dict(eps=list(args.eps), results=results)), indent=1, allow_nan=False))
    else:
        print(markdown_table(results))
        for line in ratio_lines(results):
            print(line)
    bad = unsound(results)
    for line in bad:
        print(f"robustness.py: UNSOUND: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
