"""How genlr words things for a person: an exception in one line, a duration. The one
place for each, used by the library and the command lines alike (no torch here)."""

from __future__ import annotations

LIMIT = 300  # characters of an exception's message kept in one line
CUT = " ... "


def one_line(err: BaseException, with_type: bool = False, limit: int = LIMIT) -> str:
    """``err`` in one line: its message's first line, and the next ones as long as a line
    ends in a colon (torch's "Error(s) in loading state_dict for Net:" and torchvision's
    "Error downloading x.gz:" say what is wrong below), at most ``limit`` characters
    (``shorten``: its start and its end kept). The exception's type leads where
    ``with_type`` asks for it (an unexpected error) or where the message is empty."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = lines[:1]
    while kept and kept[-1].endswith(":") and len(kept) < len(lines):
        kept.append(lines[len(kept)])
    text = shorten(" ".join(kept), limit)
    if not text:
        return type(err).__name__
    return f"{type(err).__name__}: {text}" if with_type else text


def shorten(text: str, limit: int = LIMIT) -> str:
    """``text`` in at most ``limit`` characters, cut in the middle: a message's start says
    what is wrong and its end what to do (after the last "; ", kept whole where it takes
    at most two thirds of the room), while the middle holds details (a path, a cause)."""
    if len(text) <= limit:
        return text
    room = limit - len(CUT)
    advice = text.rsplit("; ", 1)[1] if "; " in text else ""
    if advice and len(advice) + 2 <= 2 * room // 3:
        cut, tail = CUT.rstrip() + "; ", advice
    else:
        cut, tail = CUT, text[-(room // 3):].lstrip()
    head = text[:limit - len(cut) - len(tail)]
    if " " in head[-20:]:  # end the start at a word where one ends near the cut
        head = head[:head.rindex(" ")]
    return f"{head}{cut}{tail}"


def duration(seconds: float) -> str:
    """``12.3s``, ``2m05s``, ``1h02m``, ``2d03h``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"
