"""Plots of grouped runs: PNG files drawn with matplotlib's Agg backend.

    from tools.plots import write_plots, make_figures, PLOT_FILES, PlotInput, PlotGroup

val_loss_vs_step and val_loss_vs_time (one line per run, one colour and line style per group, each
with a zoomed panel of the last 30% of training), bound_vs_step, max_act_vs_step and frontier (final
val loss against log10 bound, one point per group, error bars = sample std over seeds). Legends sit
outside the axes; a plot with nothing to draw is not written. matplotlib is imported only when
figures are made.

What to draw arrives as a PlotInput: the groups with their runs, legend labels, truncation marks and
final statistics, and which bound. tools/compare.py makes it (compare.plot_input) from its groups and
statistics; this module imports nothing of compare.py, whose command line writes the plots.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import textwrap
from dataclasses import dataclass

from data.files import atomic_write
from tools.runlog import RunLog

MAX_LABEL = 40  # characters per line of a legend label
LABEL_LINES = 3  # lines of a legend label before its "(stopped at ...)" mark and run count


@dataclass
class PlotGroup:
    """One group as the plots draw it. loss and bound: (mean, sample std or None) over the runs its
    statistics use of their final val loss and log10 bound (None where not logged)."""
    runs: list[RunLog]
    label: str  # its legend label
    mark: str  # "(stopped at S/M)" when its statistics come from truncated runs, else ""
    loss: tuple[float | None, float | None]
    bound: tuple[float | None, float | None]


@dataclass
class PlotInput:
    """Everything the plots draw: the groups in legend order, and the bound (its log key, read per step
    for bound_vs_step, and its name for the axes). reference: the setting the labels list changes from
    (the legend's title), None when the labels are whole."""
    groups: list[PlotGroup]
    bound_key: str
    bound_name: str
    reference: str | None = None


PLOT_FILES = ("val_loss_vs_step.png", "val_loss_vs_time.png", "bound_vs_step.png",
              "max_act_vs_step.png", "frontier.png")
ZOOM_FRACTION = 0.3  # the zoomed panel shows the last 30% of training
_COLORS = [f"C{i}" for i in range(10)]
_LINESTYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<"]


def group_styles(n: int) -> list[dict]:
    """n (colour, linestyle, marker) combinations: colours cycle fastest, then linestyles and
    markers together. Distinct (colour, linestyle) for n <= 40, (colour, marker) for the frontier's
    points for n <= 100, all three for n <= 200."""
    out = []
    for i in range(n):
        c, rest = i % len(_COLORS), i // len(_COLORS)
        out.append({"color": _COLORS[c], "linestyle": _LINESTYLES[rest % len(_LINESTYLES)],
                    "marker": _MARKERS[rest % len(_MARKERS)]})
    return out


def shorten(text: str, width: int = 2 * MAX_LABEL) -> str:
    """At most `width` characters, an ellipsis marking a cut."""
    return text if len(text) <= width else text[:width - 1] + "…"


def wrap_label(text: str, max_lines: int | None = None) -> str:
    """`text` on lines of at most MAX_LABEL characters (broken at spaces where possible), the last
    line ending in an ellipsis when it does not fit in max_lines."""
    lines = textwrap.wrap(text, MAX_LABEL, break_on_hyphens=False) or [""]
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [shorten(lines[max_lines - 1] + " …", MAX_LABEL)]
    return "\n".join(lines)


def _legend_entries(view: PlotInput) -> list[str]:
    """Legend text per group: label, truncation mark and run count."""
    return [wrap_label(g.label, LABEL_LINES) + "\n" + wrap_label(f"{g.mark} (n={len(g.runs)})") if g.mark
            else wrap_label(f"{g.label} (n={len(g.runs)})", LABEL_LINES + 1) for g in view.groups]


def _legend_title(view: PlotInput) -> str | None:
    if view.reference is None:
        return None
    return wrap_label("changes from the most common setting: " + view.reference)


def _finite_pairs(xs, ys):
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None
             and math.isfinite(x) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _curves(view: PlotInput, key: str, xkey: str, logy: bool) -> list[list[tuple[list, list]]]:
    """Per group, per run: (xs, ys) of the finite points of `key` against step or train time (s)."""
    out = []
    for g in view.groups:
        per_run = []
        for r in g.runs:
            steps, ys = r.series(key)
            xs = steps if xkey == "step" else [r.points[s].get("train_time", math.nan) / 1000 for s in steps]
            xs, ys = _finite_pairs(xs, ys)
            if logy:
                xs, ys = _finite_pairs(xs, [y if y > 0 else None for y in ys])
            per_run.append((xs, ys))
        out.append(per_run)
    return out


def _zoom_limits(curves, fraction: float) -> tuple[tuple[float, float], tuple[float, float], int] | None:
    """((x0, x1), (y0, y1), groups off scale) of the last `fraction` of the x-range. The y-range
    covers the lowest point there and every point of the groups whose final value is within 5x the
    distance from that lowest point to the median final value (so a few far-off groups do not
    flatten the rest); the groups left out are counted."""
    xs = [x for g in curves for xr, _ in g for x in xr]
    if not xs:
        return None
    x1 = max(xs)
    x0 = x1 - fraction * (x1 - min(xs))
    ends = []  # per group with points in the window: (its points there, its lowest final value)
    for g in curves:
        w = [y for xr, yr in g for x, y in zip(xr, yr) if x >= x0]
        if w:
            ends.append((w, min(yr[-1] for xr, yr in g if xr and xr[-1] >= x0)))
    if not ends or x1 == x0:
        return None
    lo = min(min(w) for w, _ in ends)
    spread = max(statistics.median(f for _, f in ends) - lo, 1e-3 * abs(lo), 1e-12)
    kept = [w for w, f in ends if f <= lo + 5 * spread]
    hi = max(max(w) for w in kept)
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * (abs(hi) or 1.0)
    return (x0, x1), (lo - pad, hi + pad), len(ends) - len(kept)


def _figure(plt, panels: int, texts: list[str], title: str | None):
    """Figure with `panels` axes side by side, tall enough for a legend of `texts` (7 pt: ~0.12 in
    per text line, ~0.05 in between entries) and its title, which goes to their right."""
    lines = sum(t.count("\n") + 1 for t in texts) + (title.count("\n") + 1 if title else 0)
    columns = 1 if len(texts) <= 30 else 2
    height = max(4.5, (0.125 * lines + 0.06 * len(texts)) / columns + 1.0)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels + 3.2 * columns, height), squeeze=False,
                             layout="constrained")
    return fig, list(axes[0])


def _add_legend(fig, handles, texts, title):
    # "outside" with constrained layout reserves the legend's space next to the axes: never on data
    fig.legend(handles, texts, loc="outside right upper", fontsize=7, title=title, title_fontsize=7,
               ncols=1 if len(texts) <= 30 else 2, frameon=False)


def _curve_figure(plt, view: PlotInput, key, xkey, xlabel, ylabel, title, logy=False, zoom=False):
    """One line per run, one colour+linestyle per group, of `key` against step or train time
    (xkey), with a zoomed panel of the end of training when `zoom`. None when nothing to draw."""
    curves = _curves(view, key, xkey, logy)
    if not any(xr for g in curves for xr, _ in g):
        return None
    limits = _zoom_limits(curves, ZOOM_FRACTION) if zoom else None
    styles = group_styles(len(view.groups))
    texts = _legend_entries(view)
    fig, axes = _figure(plt, 2 if limits else 1, texts, _legend_title(view))
    handles = []
    for per_run, style, group in zip(curves, styles, view.groups):
        handle = None
        for ax in axes:
            for (xs, ys), r in zip(per_run, group.runs):
                if not xs:
                    continue
                (line,) = ax.plot(xs, ys, color=style["color"], ls=style["linestyle"], lw=1.2, alpha=0.85)
                handle = handle or line
                if not r.complete:  # where a truncated run stopped
                    ax.plot(xs[-1:], ys[-1:], color=style["color"], marker="x", ms=6, ls="none")
        handles.append(handle)
    keep = [i for i, h in enumerate(handles) if h is not None]
    for ax in axes:
        if logy:
            ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=10)
    if limits:
        (x0, x1), (y0, y1), off = limits
        axes[1].set_xlim(x0, x1)
        axes[1].set_ylim(y0, y1)
        axes[1].set_title(f"last {ZOOM_FRACTION:.0%} of training"
                          + (f" ({off} group(s) above the range)" if off else ""), fontsize=10)
    _add_legend(fig, [handles[i] for i in keep], [texts[i] for i in keep], _legend_title(view))
    return fig


def _frontier_figure(plt, view: PlotInput):
    """Final val loss against log10 bound: one point per group (mean, error bars = sample std over
    seeds); groups with an infinite bound as horizontal lines. None when no group has both a finite
    final loss and a finite bound."""
    name = view.bound_name
    points = [(*g.loss, *g.bound) for g in view.groups]
    finite = lambda x: x is not None and math.isfinite(x)  # noqa: E731
    if not any(finite(loss) and finite(mean_bound) for loss, _, mean_bound, _ in points):
        return None
    styles = group_styles(len(view.groups))
    texts = _legend_entries(view)
    fig, (ax,) = _figure(plt, 1, texts, _legend_title(view))
    handles, kept = [], []
    for i, ((loss, loss_std, mean_bound, bound_std), style) in enumerate(zip(points, styles)):
        if not finite(loss):
            continue
        if finite(mean_bound):
            h = ax.errorbar([mean_bound], [loss], xerr=[bound_std] if finite(bound_std) else None,
                            yerr=[loss_std] if finite(loss_std) else None, fmt=style["marker"],
                            color=style["color"], capsize=3)
        elif mean_bound == math.inf:
            h = ax.axhline(loss, color=style["color"], ls=style["linestyle"], lw=1)
            texts[i] += ": bound inf"
        else:
            continue
        handles.append(h)
        kept.append(texts[i])
    ax.set(xlabel=f"log10 {name}", ylabel="final val loss")
    title = f"loss vs {name} (mean ± std over seeds)"
    bars = [(loss - (std if finite(std) else 0), loss + (std if finite(std) else 0), loss)
            for loss, std, *_ in points if finite(loss)]  # each group's error bar, ending at its mean
    limits = _zoom_limits([[([0.0, 0.5, 1.0], list(bar))] for bar in bars], 1.0)
    if limits and limits[2]:  # a few far-off groups would flatten the rest: leave them out of range
        ax.set_ylim(*limits[1])
        title += f"\n({limits[2]} group(s) above the range)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _add_legend(fig, handles, kept, _legend_title(view))
    return fig


def make_figures(view: PlotInput) -> dict[str, object]:
    """{PLOT_FILES name: matplotlib Figure, or None when there is nothing to draw}. The caller closes
    the figures (write_plots does)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return {
        PLOT_FILES[0]: _curve_figure(plt, view, "val_loss", "step", "step", "val loss",
                                     "validation loss", zoom=True),
        PLOT_FILES[1]: _curve_figure(plt, view, "val_loss", "time", "train time (s)", "val loss",
                                     "validation loss vs training time", zoom=True),
        PLOT_FILES[2]: _curve_figure(plt, view, view.bound_key, "step", "step", f"log10 {view.bound_name}",
                                     view.bound_name),
        PLOT_FILES[3]: _curve_figure(plt, view, "act_max_entry", "step", "step",
                                     "max |activation| entry", "largest activation entry", logy=True),
        PLOT_FILES[4]: _frontier_figure(plt, view),
    }


# why a plot is left out; {bound}: the bound's name
_EMPTY_REASONS = {PLOT_FILES[0]: "no run logs val_loss", PLOT_FILES[1]: "no run logs val_loss with train_time",
                  PLOT_FILES[2]: "no run logs a {bound}", PLOT_FILES[3]: "no run logs act_max_entry",
                  PLOT_FILES[4]: "no group has a finite final val loss and {bound}"}


def _save_png(fig, path: str) -> None:
    """The figure as a PNG at `path`, written atomically (never a partial file)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def write_plots(view: PlotInput, out_dir: str, err=None) -> list[str]:
    """Write the PLOT_FILES PNGs that have something to show into out_dir (created if needed); one line
    on `err` (default stderr) per plot left out. Returns the paths written. Raises OSError when out_dir
    cannot be written."""
    import matplotlib.pyplot as plt

    err = sys.stderr if err is None else err
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, fig in make_figures(view).items():
        if fig is None:
            print(f"compare.py: no {name}: {_EMPTY_REASONS[name].format(bound=view.bound_name)}", file=err)
            continue
        try:
            path = os.path.join(out_dir, name)
            _save_png(fig, path)
            written.append(path)
        finally:
            plt.close(fig)
    return written
