"""How errors and reports say things: suggestions for misspelt names, long lists cut short, and a
core message in an adapter's own vocabulary. One wording for every module that talks to users."""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

__all__ = ["closest", "in_callers_terms", "shortened", "suggestion"]


def suggestion(name: str, choices: Iterable, cutoff: float = 0.8) -> str | None:
    """The valid name closest to a misspelt ``name``, if one is close enough to be what was meant."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=cutoff)
    return match[0] if match else None


def closest(name: str, choices: Iterable, what: str) -> str:
    """``; did you mean 'x'? (the presets are [...])`` for a misspelt ``name``: the suggestion only
    when one is close, the valid names always."""
    choices = [str(c) for c in choices]
    match = suggestion(name, choices)
    listed = f"{what} are {choices}"
    return f"; did you mean {match!r}? ({listed})" if match else f"; {listed}"


def shortened(lines: Iterable[str], limit: int = 20, more: str = "more") -> list[str]:
    """The first ``limit`` lines, then ``... and N more`` (``more`` names what they are) if any were cut."""
    lines = list(lines)
    if len(lines) <= limit:
        return lines
    return lines[:limit] + [f"... and {len(lines) - limit} {more}"]


def in_callers_terms(message: str, names: Mapping[str, str]) -> str:
    """A core error message in an adapter's vocabulary: each core field name (a whole word) becomes
    the key the user wrote, e.g. ``num_channels`` -> ``in_channels`` for the OpenMMLab backbone."""
    return re.sub(r"\b(" + "|".join(map(re.escape, names)) + r")\b", lambda m: names[m.group(1)], message)
