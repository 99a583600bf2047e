"""flags.py on a small dataclass of its own: parsing, presets, --help from the comments, range checks."""
from dataclasses import dataclass

import pytest

import flags


@dataclass
class Knobs:
    preset: str = "big"  # which preset
    width: int = 8  # how wide
    rate: float = 0.5  # how fast
    name: str = "x"  # what to call it


PRESETS = {"big": {}, "small": {"width": 2}}


def test_parse_applies_the_preset_then_the_flags_with_their_types():
    k = flags.parse_args(Knobs, PRESETS, ["--preset=small", "--rate=2", "--name=y"], lambda: "")
    assert k == Knobs(preset="small", width=2, rate=2.0, name="y")
    assert flags.parse_args(Knobs, PRESETS, [], lambda: "") == Knobs()
    assert flags.preset_overrides(k, PRESETS) == {"width": 2}
    assert flags.preset_overrides(flags.from_preset(Knobs, PRESETS, "small", width=3), PRESETS) == {}


@pytest.mark.parametrize("argv, message", [
    (["--width"], "bad argument '--width': use --field=value"),
    (["--widht=3"], "unknown hyperparameter --widht"),
    (["--width=2.5"], "--width='2.5' is not a valid int"),
    (["--preset=huge"], "--preset=huge: unknown; choose one of big, small"),
])
def test_bad_flags_get_one_line_naming_them(argv, message):
    with pytest.raises(ValueError) as e:
        flags.parse_args(Knobs, PRESETS, argv, lambda: "")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_help_lists_every_field_with_default_comment_and_choices(capsys):
    with pytest.raises(SystemExit) as e:
        flags.parse_args(Knobs, PRESETS, ["--help"], lambda: flags.usage(Knobs, "Knobs.", PRESETS,
                                                                         {"name": ("x", "y")}))
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Knobs." and "  --rate=0.5  how fast" in lines
    assert "  --name='x'  what to call it  [x | y]" in lines


def test_range_checks_name_the_flag():
    flags.check_ranges(Knobs(), {"name": ("x",)}, positive=("width",), unit_interval=("rate",))
    for knobs, kw, message in [
        (Knobs(width=0), dict(positive=("width",)), "--width=0 must be > 0"),
        (Knobs(rate=-1.0), dict(non_negative=("rate",)), "--rate=-1.0 must be >= 0"),
        (Knobs(width=2), dict(switches=("width",)), "--width=2 must be 0 or 1"),
        (Knobs(rate=1.5), dict(unit_interval=("rate",)), "--rate=1.5 must be in [0, 1]"),
        (Knobs(name="z"), dict(), "--name=z: use one of x"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            flags.check_ranges(knobs, {"name": ("x",)}, **kw)
