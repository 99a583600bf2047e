"""tools/plots.py: figures of grouped synthetic runs (legends outside the axes, one style per group, short
labels, the zoomed panel), and plots with nothing to draw left out with a note."""
import io
import math
import os

from test_runlog import A_LOSSES, VALS, _seed_logs, config, our_log, speedrun_log, write
from tools import plots
from tools.compare import group_runs, plot_input
from tools.runlog import parse_log


def test_plots_with_nothing_to_draw_are_skipped_with_a_note(tmp_path):
    """Speedrun logs have no bound or activations: those plots are not written, one line each says why."""
    run = parse_log(write(tmp_path / "s" / "x.txt", speedrun_log(3.28)))
    err = io.StringIO()
    written = plots.write_plots(plot_input(group_runs([run])), str(tmp_path / "plots"), err=err)
    assert [os.path.basename(p) for p in written] == ["val_loss_vs_step.png", "val_loss_vs_time.png"]
    assert all(os.path.getsize(p) > 1000 for p in written)
    assert sorted(os.listdir(tmp_path / "plots")) == sorted(os.path.basename(p) for p in written)  # no temp files
    notes = err.getvalue().splitlines()
    assert notes == ["compare.py: no bound_vs_step.png: no run logs a certified bound",
                     "compare.py: no max_act_vs_step.png: no run logs act_max_entry",
                     "compare.py: no frontier.png: no group has a finite final val loss and certified bound"]


def test_truncated_group_marked_in_legends(tmp_path):
    """Like the spectral_normalize runs stopped at step 1550 of 2000: the legends say so (the table too,
    tests/test_compare.py)."""
    paths = _seed_logs(tmp_path, "a", 1.0, A_LOSSES)
    paths.append(write(tmp_path / "t" / "t.txt", our_log(config(0, 1.0, "spectral_normalize"), VALS, stop_after=3)))
    groups = group_runs([parse_log(p) for p in paths])
    label = "constraint=spectral_normalize"
    figs = plots.make_figures(plot_input(groups))
    try:
        texts = [t.get_text() for t in figs["val_loss_vs_step.png"].legends[0].get_texts()]
        assert texts[1] == f"{label}\n(stopped at 2/4) (n=1)" and "stopped" not in texts[0]
        assert any("stopped at 2/4" in t.get_text() for t in figs["frontier.png"].legends[0].get_texts())
    finally:
        _close(figs)


def _close(figs):
    import matplotlib.pyplot as plt
    for fig in figs.values():
        if fig is not None:
            plt.close(fig)


def _fifteen_groups(tmp_path):
    """15 configurations that differ in several long-named keys (one stopped early), 1-2 seeds each,
    plus two speedrun folders given by absolute path."""
    paths = []
    for g in range(15):
        extra = {"muon_lr": [0.025, 0.05, 0.1][g % 3], "final_logit_scale": [4.0, 8.0, 16.0][g // 5],
                 "lm_head_w_max": [1.0, 2.0, 4.0][g % 3], "lm_head_lr": [0.005, 0.02][g % 2],
                 "attn_logit_scale": 8.0 + (g == 7), "optimizer": "adamw" if g == 14 else "muon"}
        for seed in range(1 + g % 2):
            final = 1.45 + g / 100 + seed / 1000 + (2.0 if g == 13 else 0.0)  # one far-off group
            vals = {s: (final + (5.5 - final) * math.exp(-s / 2) * (s < 8), 0.5, f"{8 + g / 10}", 4.0 + g)
                    for s in range(0, 9, 2)}
            cfg = config(seed, [1.0, 2.0, 3.0, 4.0, 5.0][g % 5], "soft_cap" if g < 12 else "spectral_normalize",
                         num_iterations=8, **extra)
            paths.append(write(tmp_path / "runs" / f"g{g}-s{seed}.txt",
                               our_log(cfg, vals, stop_after=5 if g == 12 else None)))
    for sub in ("2024-10-14_ModernArch", "2025-01-16_Sub3Min"):
        paths.append(write(tmp_path / "records" / "track_1_short" / sub / "log.txt", speedrun_log(3.28, m=8)))
    return group_runs([parse_log(p) for p in paths])


def test_plots_at_15_groups_are_readable(tmp_path):
    """Legend outside every axes (bounding boxes, labels and ticks included), one colour+linestyle
    per group, short labels without absolute paths, a zoomed panel that hides no close group."""
    groups = _fifteen_groups(tmp_path)
    assert len(groups) == 17
    figs = plots.make_figures(plot_input(groups))
    try:
        for name, fig in figs.items():
            assert fig is not None, name
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            (legend,) = fig.legends
            box = legend.get_window_extent(renderer)
            fig_box = fig.bbox
            assert box.x0 >= fig_box.x0 - 1 and box.y0 >= fig_box.y0 - 1  # inside the figure
            for ax in fig.axes:
                assert not box.overlaps(ax.get_tightbbox(renderer)), name
            texts = [t.get_text() for t in legend.get_texts()]
            n = 17 if name.startswith("val_loss") else 15  # speedrun logs have no bound or activations
            assert len(texts) == n and len(set(texts)) == n
            assert all(len(line) <= plots.MAX_LABEL for t in texts for line in t.split("\n")), texts
            assert all(str(tmp_path) not in t for t in texts)
            if name != "frontier.png":
                looks = [(h.get_color(), h.get_linestyle()) for h in legend.legend_handles]
                assert len(set(looks)) == n, looks
        texts = [t.get_text() for t in figs["val_loss_vs_step.png"].legends[0].get_texts()]
        assert "speedrun 2024-10-14_ModernArch (n=1)" in texts, texts
        assert any(t.startswith("optimizer=adamw") for t in texts)
        zoom = figs["val_loss_vs_step.png"].axes[1]
        lo, hi = zoom.get_ylim()
        assert lo < 1.45 and 1.45 + 14 / 100 < hi < 3.0  # every close group in range, the far ones not
        assert "3 group(s) above the range" in zoom.get_title()  # group 13 and the two speedrun folders
    finally:
        _close(figs)


def test_group_styles_unique():
    styles = plots.group_styles(120)
    assert len({(s["color"], s["linestyle"]) for s in styles[:40]}) == 40
    assert len({(s["color"], s["linestyle"], s["marker"]) for s in styles}) == 120
    assert len({(s["color"], s["marker"]) for s in styles[:100]}) == 100

