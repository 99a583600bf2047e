"""tools/runlog.py on synthetic logs in every format it reads: ours (train_gpt.py), modded-nanogpt's, the
optimization track's and the Lipschitz paper's fork; truncated, resumed, malformed; directory scans.
The log builders here are shared with tests/test_compare.py and tests/test_plots.py."""
import io
import json
import math
import os

import pytest
from hypothesis import given, settings, strategies as st

from run_control import SEPARATOR
from tools import runlog
from tools.runlog import LogFormatError, parse_log

SEP = SEPARATOR

# Source code in the preamble, with lines that look like run lines: the parser must ignore them.
FAKE_CODE = """import torch
print0(f"step:{step}/{train_steps} val_loss:{val_loss:.4f} train_time:{t:.0f}ms step_avg:{a:.2f}ms")
step:1/2 val_loss:0.1234 val_acc:0.9 train_time:1ms step_avg:1ms
step:2/2 val_loss:0.0001 val_acc:0.99 train_time:2ms step_avg:1ms
step:2/2 lipschitz_bound_log10:-7
config: {"seed": 999, "w_max": 123}
peak memory allocated: 1 MiB
run finished
"""


def config(seed, w_max=8.0, constraint="soft_cap", num_iterations=4, tokens_per_step=1024, **kw):
    return {"run_id": f"run-{constraint}-{w_max}-{seed}", "preset": "shakespeare", "arch": "lipschitz",
            "constraint": constraint, "w_max": w_max, "seed": seed, "num_iterations": num_iterations,
            "train_seq_len": 256, "batch_size": 4, "world_size": 1,
            "tokens_per_step": tokens_per_step, "val_every": 2, **kw}


def our_log(cfg, vals, stop_after=None):
    """Text of a train_gpt.py log. vals: {step: (val_loss, val_acc, bound_log10_text, act_max)}, the bound logged
    as its Appendix C and sharp forms alike; training lines for every step; stop_after truncates after that
    step's training line."""
    m = cfg["num_iterations"]
    lines = [FAKE_CODE, SEP, "# lipschitz.py", "def certified_bound(model): ...", SEP,
             "Running Python 3.12", "Running PyTorch 2.13.0 on cpu", SEP,
             "config: " + json.dumps(cfg)]
    for step in range(m + 1):
        t = 100 * step
        if step in vals:
            loss, acc, bound, act = vals[step]
            lines += [f"step:{step}/{m} val_loss:{loss:.4f} val_acc:{acc:.4f} train_time:{t}ms step_avg:50.00ms",
                      f"step:{step}/{m} lipschitz_bound_log10:{bound} lipschitz_bound_sharp_log10:{bound}",
                      f"step:{step}/{m} max_weight_norm qkv:1.0000 o:0.9900 fc:1.0100 proj:0.5000 "
                      f"lm_head:{8 + step / 10:.4f} emb_row_rms:1.0000",
                      f"step:{step}/{m} act_max_entry:{act} act_max_rms:{act / 10}"]
        if step == m:
            break
        lines.append(f"step:{step + 1}/{m} train_time:{t + 100}ms step_avg:100.00ms")
        if stop_after is not None and step + 1 >= stop_after:
            return "\n".join(lines) + "\n"
    lines += ["peak memory allocated: 123 MiB reserved: 456 MiB", "run finished"]
    return "\n".join(lines) + "\n"


def speedrun_log(final_loss, m=3):
    """A modded-nanogpt style log: code, separators, nvidia-smi, no config, no val_acc,
    train_loss on training lines, 'nanms' averages, older peak memory wording."""
    lines = [FAKE_CODE, SEP, "Running PyTorch 2.6.0", "| NVIDIA-SMI 550.127.05 |", SEP,
             "Training dataloader files: ['a.bin']", SEP,
             f"step:0/{m} val_loss:10.8258 train_time:0ms step_avg:nanms"]
    for step in range(1, m + 1):
        lines.append(f"step:{step}/{m} train_loss:{5 - step / 10:.4f} train_time:{150 * step}ms step_avg:nanms")
    lines += [f"step:{m}/{m} val_loss:{final_loss:.4f} train_time:{150 * m + 5}ms step_avg:151.67ms",
              "peak memory consumption: 31563 MiB"]
    return "\n".join(lines) + "\n"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


VALS = {0: (4.1744, 0.0152, "0.0", 1.0), 2: (2.5, 0.3, "12.5", 20.0), 4: (2.25, 0.35, "1e+300", 148480.0)}


def _seed_logs(tmp_path, sub, w_max, losses, constraint="soft_cap"):
    paths = []
    for seed, loss in enumerate(losses):
        vals = {0: (4.0, 0.0, "0.0", 1.0), 4: (loss, 0.3 + seed / 100, f"{w_max * 10 + seed}", 50.0 + seed)}
        paths.append(write(tmp_path / sub / f"s{seed}.txt", our_log(config(seed, w_max, constraint), vals)))
    return paths


A_LOSSES = [3.50, 3.55, 3.47]


B_LOSSES = [3.30, 3.31, 3.26, 3.33]


def optimization_track_log(final_loss=3.27699, m=3250, extra=True):
    """The optimization track's format: train_time in seconds, step_avg in ms, extra val fields."""
    lines = [FAKE_CODE, SEP, "Running Python 3.12.7", "Running PyTorch 2.9.0", SEP]
    for step in (0, 1625, m):
        t = 0.155 * step
        loss = 10.8258 if step == 0 else (4.1 if step < m else final_loss)
        fields = f" val_avg_loss:{loss + 0.01:.5f} val_ema_loss:{loss - 0.01:.5f}" if extra else ""
        lines.append(f"step:{step}/{m} val_loss:{loss:.5f}{fields} train_time:{t:.3f}s step_avg:155.18ms")
        if step < m:
            lines.append(f"step:{step + 1}/{m} train_time:{t + 0.155:.3f}s step_avg:155.00ms")
    lines[-1] = f"step:{m}/{m} val_loss:{final_loss:.5f} val_avg_loss:3.28 train_time:503.556s step_avg:155.18ms"
    return "\n".join(lines) + "\n"


def fork_script(final_loss=5.3999, m=20, code_tail=""):
    """The paper's nanogpt fork: its .py source, then (after separators) its training log with
    multi-line weight, activation and gradient blocks."""
    lines = ["import torch", 'print0(f"step:{step}/{train_steps} val_loss:{val_loss:.4f}")',
             "step:1/2 val_loss:0.5 train_time:1ms step_avg:1ms", 'print0(">>> Act Max Entries:")' + code_tail,
             SEP, "Running Python 3.10.12", "Running PyTorch 2.8.0", "| NVIDIA-SMI 550.90.07  Driver |", SEP]
    for step in range(0, m + 1, 10):
        loss = final_loss if step == m else 10.8258 - step / 10
        lines += [">>> Weights:",
                  "_orig_mod.embed.weight                   (50257, 768) :  l1->RMS:1.1172, RMS->RMS:31.1008",
                  "_orig_mod.blocks.0.attn.attn_q.weight    (768, 768)   : RMS->RMS:1.1461",
                  ">>> Act RMS Norms:", "Embed:     1.0000", f"Block #0: {0.9 + step / 100:.4f}", "Block #1: 0.8438",
                  "Logits:    9.0000",
                  ">>> Act Max Entries:", "Embed:     5.2812", f"Block #0: {4.8 + step:.4f}", "Block #1: 4.4375",
                  f"Logits:    {30 + step:.4f}",
                  f"step:{step}/{m} val_loss:{loss:.4f} val_acc:0.2140 train_time:{150 * step}ms step_avg:150.00ms"]
        if step < m:
            lines += [">>> Grads:", "_orig_mod.embed.weight   (50257, 768) :  l1->RMS:0.0000, RMS->RMS:-0.0000",
                      f"step:{step + 10}/{m} train_time:{150 * step + 1500}ms step_avg:150.00ms"]
    lines.append("peak memory allocated: 29585 MiB reserved: 47290 MiB")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- parsing

def test_parse_our_log_exact_numbers_and_ignores_preamble(tmp_path):
    run = parse_log(write(tmp_path / "a.txt", our_log(config(1), VALS)))
    assert run.config == config(1)
    assert run.num_iterations == 4 and run.complete and run.notes == []
    assert run.val_steps == [0, 2, 4]  # no fake step:1/2 or step:2/2 from the code
    assert run.peak_memory == "123 MiB reserved: 456 MiB" and run.finished_marker
    assert [t["step"] for t in run.train] == [1, 2, 3, 4]
    assert run.train[2] == {"step": 3, "train_time": 300.0, "step_avg": 100.0}
    final = run.final
    assert final["step"] == 4 and final["val_loss"] == 2.25 and final["val_acc"] == 0.35
    assert final["train_time"] == 400.0 and final["step_avg"] == 50.0
    assert final["lipschitz_bound_log10"] == 1e300
    assert final["max_weight_norm.lm_head"] == 8.4 and final["max_weight_norm.o"] == 0.99
    assert final["act_max_entry"] == 148480.0 and final["act_max_rms"] == 14848.0
    assert run.points[2]["lipschitz_bound_log10"] == 12.5
    assert run.series("val_loss") == ([0, 2, 4], [4.1744, 2.5, 2.25])


def test_parse_inf_bound_and_plain_bound(tmp_path):
    vals = {0: (4.0, 0.0, "inf", 1.0), 4: (3.0, 0.1, "inf", 2.0)}
    run = parse_log(write(tmp_path / "a.txt", our_log(config(1), vals)))
    assert run.final["lipschitz_bound_log10"] == math.inf


def test_parse_speedrun_log(tmp_path):
    run = parse_log(write(tmp_path / "rec" / "x.txt", speedrun_log(3.2785)))
    assert run.config is None and run.complete
    assert run.val_steps == [0, 3]
    assert run.final == {"step": 3, "val_loss": 3.2785, "train_time": 455.0, "step_avg": 151.67}
    assert math.isnan(run.train[0]["step_avg"]) and run.train[0]["train_loss"] == 4.9
    assert run.peak_memory == "31563 MiB" and not run.finished_marker


def test_parse_truncated_log(tmp_path):
    run = parse_log(write(tmp_path / "t.txt", our_log(config(1), VALS, stop_after=3)))
    assert not run.complete and run.last_step == 3 and run.peak_memory is None
    assert run.final["step"] == 2 and run.final["val_loss"] == 2.5
    assert run.notes[0].startswith("truncated at step 3/4: last validation at step 2")
    assert "1 validations missing (4)" in run.notes[0]
    # killed before the first validation finished its extra lines, or before any validation at all
    text = our_log(config(1), VALS)
    run0 = parse_log(write(tmp_path / "t0.txt", text[:text.index("step:0/4 lipschitz_bound_log10")]))
    assert run0.val_steps == [0] and "lipschitz_bound_log10" not in run0.final


def test_truncated_before_any_validation(tmp_path):
    text = SEP + "\nconfig: " + json.dumps(config(1)) + "\nstep:1/4 train_time:100ms step_avg:100.00ms\n"
    run = parse_log(write(tmp_path / "t.txt", text))
    assert run.final == {} and not run.complete
    assert run.notes == ["truncated at step 1/4: no validation logged"]


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"   \n\n", "empty file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    (b"caf\xe9 step:1/2 val_loss:3\n", "not UTF-8"),
    (b"hello\nthis is a README\n", "no 'step:N/M ...' lines"),
    ((FAKE_CODE + SEP + "\nRunning PyTorch\n").encode(), "no 'step:N/M ...' lines"),
    (("config: {not json\nstep:1/2 val_loss:3.0 train_time:1ms step_avg:1ms\n").encode(), "not valid JSON"),
])
def test_malformed_files_raise_naming_file_and_reason(tmp_path, content, reason):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(LogFormatError, match=reason) as e:
        parse_log(str(p))
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_unreadable_path(tmp_path):
    with pytest.raises(LogFormatError, match="unreadable"):
        parse_log(str(tmp_path / "missing.txt"))
    with pytest.raises(LogFormatError, match="unreadable"):
        parse_log(str(tmp_path))  # a directory


def test_lines_must_match_in_full(tmp_path):
    text = (SEP + "\nstep:1/2 train_time:100ms step_avg:100.00ms\n"
            "step:2/2 val_loss:3.0 train_time:200ms step_avg:100.00ms extra words: here\n"
            "xstep:2/2 val_loss:1.0 train_time:200ms step_avg:100.00ms\n"
            "step:2/2 val_loss:abc\n")
    run = parse_log(write(tmp_path / "a.txt", text))
    assert run.points == {} and len(run.train) == 1


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True),
                       st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=6),
       st.sampled_from(["{!r}", "{:.4f}", "{:.6e}", "{}ms", "{:.3f}s"]))
def test_step_tokens_round_trip(values, spec):
    """Any float written by Python's formatting (repr, fixed, exponent, with 'ms', or 's' for
    seconds) parses back to the same float in ms (the formatted one; seconds times 1000),
    including inf, -inf, nan and huge/tiny values."""
    tokens = " ".join(f"{k}:{spec.format(v)}" for k, v in values.items())
    assert runlog.STEP_LINE.fullmatch(f"step:3/10 {tokens}")
    parsed = runlog.parse_step_tokens(tokens)
    scale = 1000.0 if spec.endswith("}s") else 1.0
    expected = {k: float(spec.format(v).removesuffix("s").removesuffix("m")) * scale for k, v in values.items()}
    assert parsed.keys() == expected.keys()
    for k, v in expected.items():
        assert parsed[k] == v or (math.isnan(v) and math.isnan(parsed[k]))


def test_bare_word_prefixes_following_keys():
    assert runlog.parse_step_tokens("a:1 norm qkv:2 o:3 act x:4") == {
        "a": 1.0, "norm.qkv": 2.0, "norm.o": 3.0, "act.x": 4.0}


def test_run_stopped_on_nan_train_loss(tmp_path):
    """train_gpt.py logs 'step:N/M train_loss:nan' (no train_time) and stops: truncated + diverged."""
    text = our_log(config(1), VALS, stop_after=3) + "step:4/4 train_loss:nan\n"
    run = parse_log(write(tmp_path / "nan.txt", text))
    assert not run.complete and run.diverged_at == 4 and run.final["step"] == 2
    assert run.notes[0].startswith("truncated at step 4/4") and run.notes[1] == "diverged: non-finite loss at step 4"
    assert parse_log(write(tmp_path / "ok.txt", our_log(config(1), VALS))).diverged_at is None


def test_resumed_log_appends_config_and_lines(tmp_path):
    """train_gpt.py --resume appends a second config line (no preamble) and the remaining steps:
    the run reads as one complete run, with its first config."""
    first = our_log(config(1, max_steps_this_run=3), VALS, stop_after=3)
    rest = our_log(config(1, resume="ck.pt"), VALS)
    rest = rest[rest.index("step:4/4 train_time"):]
    run = parse_log(write(tmp_path / "r.txt", first + "config: " + json.dumps(config(1, resume="ck.pt")) + "\n" + rest))
    assert run.complete and run.val_steps == [0, 2, 4] and run.final["val_loss"] == 2.25
    assert run.config["max_steps_this_run"] == 3 and run.notes == ["several config lines, the first is used"]



def test_stop_and_resume_lines(tmp_path):
    """train_gpt.py's 'stopped ... at step N/M' lines give the last step even when no step line was logged
    there (a signal between two logged steps); its 'resumed run' lines mark each part of a resumed log."""
    base = our_log(config(1), VALS, stop_after=3)  # validations at 0 and 2, training lines 1 to 3
    logged_to_2 = base[:base.index("step:3/4 train_time")]
    run = parse_log(write(tmp_path / "s.txt", logged_to_2 + "stopped by SIGTERM at step 3/4; checkpoint ck/r.pt\n"))
    assert run.last_step == 3 and run.stopped_at == 3 and run.final["step"] == 2
    assert run.notes == ["truncated at step 3/4: last validation at step 2, 1 validations missing (4)"]
    rest = our_log(config(1), VALS)
    resumed = (base + "stopped at step 3/4 (--max_steps_this_run=3); checkpoint ck/r.pt\n"
               + f"config: {json.dumps(config(1, resume='ck/r.pt'))}\nresumed run run-1 from step 3/4 (ck/r.pt)\n"
               + rest[rest.index("step:4/4 train_time"):])
    run = parse_log(write(tmp_path / "r.txt", resumed))
    assert run.complete and run.resumed_from == [3] and run.last_step == 4 and run.final["val_loss"] == 2.25
    assert run.notes == ["resumed at step 3"]  # its second config line is the resume's: no note on it
    only_zero = our_log(config(1), {0: VALS[0]}, stop_after=1)
    assert parse_log(write(tmp_path / "z.txt", only_zero)).notes == [
        "truncated at step 1/4: no validation after step 0, 2 validations missing (2, 4)"]
    no_start = our_log(config(1, val_at_start=0), {2: VALS[2]}, stop_after=3)
    assert parse_log(write(tmp_path / "n.txt", no_start)).notes == [  # step 0 was never due
        "truncated at step 3/4: last validation at step 2, 1 validations missing (4)"]


def test_step_lines_exposed_for_format_checks(tmp_path):
    run = parse_log(write(tmp_path / "a.txt", our_log(config(1), VALS)))
    assert run.step_lines[0] == "step:0/4 val_loss:4.1744 val_acc:0.0152 train_time:0ms step_avg:50.00ms"
    assert len(run.step_lines) == 4 * 3 + 4  # 3 validations of 4 lines, 4 training lines


# ---------------------------------------------------------------------------- formats of the public logs

def test_optimization_track_seconds_and_extra_fields(tmp_path):
    run = parse_log(write(tmp_path / "opt" / "r.txt", optimization_track_log()))
    assert run.complete and run.num_iterations == 3250 and run.notes == []
    assert run.final["val_loss"] == 3.27699 and run.final["val_avg_loss"] == 3.28
    assert run.final["train_time"] == pytest.approx(503556.0, rel=1e-12)  # seconds -> ms, one float rounding
    assert run.final["step_avg"] == 155.18
    assert run.points[1625]["val_ema_loss"] == pytest.approx(4.09)
    assert run.train[0] == {"step": 1, "train_time": pytest.approx(155.0), "step_avg": 155.0}


def test_rejected_log_names_the_line_and_why(tmp_path):
    text = optimization_track_log().replace("train_time:503.556s", "train_time:503.556sec")
    bad_only = "\n".join(line for line in text.splitlines() if "sec" in line or not line.startswith("step:"))
    p = write(tmp_path / "bad.txt", bad_only + "\n")
    with pytest.raises(LogFormatError) as e:
        parse_log(p)
    msg = str(e.value)
    line_no = bad_only.splitlines().index(next(x for x in bad_only.splitlines() if "sec" in x)) + 1
    assert msg.startswith(p) and "\n" not in msg
    assert f"line {line_no} " in msg and "'train_time:503.556sec' is neither key:number" in msg
    # a log with some good lines is read, and the ignored line is noted with the same reason
    run = parse_log(write(tmp_path / "some.txt", text))
    assert run.final["step"] == 1625 and "1 step line(s) ignored" in run.notes[1]
    assert "train_time:503.556sec" in run.notes[1]


def test_fork_log_in_a_py_file_and_its_multiline_blocks(tmp_path):
    run = parse_log(write(tmp_path / "fork" / "train_spectral_cap.py", fork_script()))
    assert run.complete and run.val_steps == [0, 10, 20] and run.notes == []
    f = run.final
    assert f["val_loss"] == 5.3999 and f["val_acc"] == 0.214 and f["train_time"] == 3000.0
    # the residual stream's largest entry: embed and blocks, not the logits
    assert f["act_max_entry"] == 24.8 and f["act_max_entry.logits"] == 50.0 and f["act_max_entry.block1"] == 4.4375
    assert f["act_max_rms"] == pytest.approx(1.1) and f["act_max_rms.embed"] == 1.0
    assert run.points[0]["act_max_entry"] == 5.2812
    assert all("act_max_entry" not in t for t in run.train)  # blocks belong to validation lines only
    assert all("Block" not in line for line in run.step_lines)


def test_multiline_block_without_its_validation_line_is_dropped(tmp_path):
    text = fork_script()
    cut = text.rindex("step:20/20 val_loss")
    run = parse_log(write(tmp_path / "f.txt", text[:cut] + "step:20/20 train_time:3000ms step_avg:150.00ms\n"))
    assert not run.complete and "act_max_entry" not in run.points.get(20, {})
    assert run.points[10]["act_max_entry"] == 14.8
    assert "1 multi-line block(s) not followed by a validation line ignored" in run.notes
    # a block, then a training line, then a validation line: whose block it was is ambiguous
    moved = text.replace("Logits:    40.0000\nstep:10/20 val_loss",
                         "Logits:    40.0000\nstep:10/20 train_time:1500ms step_avg:150.00ms\nstep:10/20 val_loss")
    assert moved != text
    run = parse_log(write(tmp_path / "g.txt", moved))
    assert "act_max_entry" not in run.points[10] and run.points[20]["act_max_entry"] == 24.8
    assert "1 multi-line block(s) not followed by a validation line ignored" in run.notes


def test_directory_scan_reads_logs_in_scripts_and_names_every_skip(tmp_path):
    d = tmp_path / "runs"
    write(d / "fork" / "train_spectral_cap.py", fork_script())
    write(d / "fork" / "helper.py", FAKE_CODE)  # code with log-like lines but no log after a separator
    write(d / "fork" / "README.md", "# notes\nstep:1/2 val_loss:3.0 train_time:1ms step_avg:1ms\n")
    write(d / "console.out", speedrun_log(3.3))
    write(d / "ckpt.pt", "")
    (d / "ckpt.pt").write_bytes(b"PK\x03\x04\x00\x00" + bytes(100))
    write(d / ".git" / "HEAD", "ref: refs/heads/main\n")
    err = io.StringIO()
    runs = runlog.load_runs([str(d)], err=err)
    assert sorted(os.path.basename(r.path) for r in runs) == ["console.out", "train_spectral_cap.py"]
    lines = err.getvalue().splitlines()
    for name, reason in [("helper.py", "not a log file"), ("README.md", "not a log file"),
                         ("ckpt.pt", "binary file")]:
        assert sum(name in x and reason in x for x in lines) == 1, (name, lines)
    assert lines[-1] == "compare.py: read 2 log(s), skipped 3 file(s); 1 hidden file(s)/folder(s) not scanned"
    # named explicitly, a script is read whatever its extension (and without a separator)
    assert runlog.load_runs([str(d / "fork" / "helper.py")], err=io.StringIO())[0].val_steps == [1, 2]


def test_source_hash_tells_identical_code_apart(tmp_path):
    a1 = parse_log(write(tmp_path / "a1.txt", speedrun_log(3.28)))
    a2 = parse_log(write(tmp_path / "a2.txt", speedrun_log(3.30).replace("| NVIDIA-SMI 550", "| NVIDIA-SMI 560")))
    b = parse_log(write(tmp_path / "b.txt", speedrun_log(3.29).replace("import torch", "import torch, os")))
    assert a1.source_hash == a2.source_hash != b.source_hash  # hardware is not source; code is
    assert len(a1.source_hash) == 12
    ours = [parse_log(p) for p in _seed_logs(tmp_path, "o", 1.0, A_LOSSES)]
    assert len({r.source_hash for r in ours}) == 1 and ours[0].source_hash != a1.source_hash
    assert parse_log(write(tmp_path / "n.txt", "step:1/1 val_loss:3.0 train_time:1ms step_avg:1ms\n")).source_hash is None

