"""genlr.messages: the one place an exception is put in one line and a duration worded."""

from __future__ import annotations

import pytest

from genlr.messages import LIMIT, duration, one_line, shorten


@pytest.mark.parametrize("err, expected", [
    (ValueError("lr must be >= 0, got -1\nmore detail"), "lr must be >= 0, got -1"),
    (ValueError(""), "ValueError"),  # an empty message: its type, never an IndexError
    (KeyError(), "KeyError"),
    (RuntimeError("Error(s) in loading state_dict for Net:\n\tsize mismatch for w\n\tmore"),
     "Error(s) in loading state_dict for Net: size mismatch for w"),
    (OSError("\n\n  spaced  \n"), "spaced"),
])
def test_one_line(err, expected):
    assert one_line(err) == expected
    assert "\n" not in one_line(err, with_type=True)


def test_one_line_names_the_type_when_asked_and_keeps_it_short():
    assert one_line(ValueError("bad"), with_type=True) == "ValueError: bad"
    long = one_line(ValueError("a" * 500 + "z" * 500))
    assert len(long) == LIMIT and long.startswith("aaa") and " ... " in long and long.endswith("zzz")
    assert len(one_line(ValueError("x" * 1000), limit=80)) == 80


def test_a_cut_keeps_what_to_do():
    """A long line is cut in its middle (a path, a cause), never at its end: the start says
    what is wrong, the last "; " clause what to do (issue 28: "...into tas...")."""
    advice = "put it in torchvision's layout (DIR/MNIST/raw/) into task.data_root=DIR"
    text = f"mnist: not found in /root/.cache/genlr/MNIST/raw, and the download failed ({'x' * 400}); {advice}"
    cut = one_line(OSError(text))
    assert len(cut) <= LIMIT
    assert cut.startswith("mnist: not found in /root/.cache/genlr/MNIST/raw")
    assert cut.endswith(f" ...; {advice}")
    assert shorten("short; enough") == "short; enough"


@pytest.mark.parametrize("seconds, expected", [
    (0.04, "0.0s"), (12.34, "12.3s"), (59.9, "59.9s"), (125, "2m05s"), (3720, "1h02m"),
    (47 * 3600 + 59 * 60, "47h59m"), (2 * 86400 + 3 * 3600 + 59, "2d03h"),
])
def test_duration(seconds, expected):
    assert duration(seconds) == expected
