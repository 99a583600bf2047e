"""Assertions shared by the tests of command-line scripts."""


def one_line_error(capsys, code, *needles):
    """The script exited 2 with one line on stderr, no traceback, holding every needle."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
