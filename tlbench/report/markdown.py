"""Markdown- and HTML-safe text for BENCHMARKS.md: every string a record or the command
line supplies goes through :func:`text` before it lands in a table, a list or a heading.

A name with ``|`` would split a table cell, a newline would end the table (or start a
heading), a backtick would open code, ``[``/``]`` would make links and raw ``<...>``
would be live HTML where the file is rendered.  Each is escaped; newlines become spaces.
"""

from __future__ import annotations

import re

_ESCAPES = str.maketrans(
    {
        "\\": "\\\\",
        "|": "\\|",
        "`": "\\`",
        "*": "\\*",
        "[": "\\[",
        "]": "\\]",
        "<": "&lt;",
        ">": "&gt;",
        "&": "&amp;",
        "\n": " ",
        "\r": " ",
        "\t": " ",
    }
)
_PLAIN = re.compile(r"[A-Za-z0-9._+:,=/ ()-]*")


def text(value: object) -> str:
    """``value`` as inert Markdown text (safe in table cells, list items, alt text)."""
    return str(value).translate(_ESCAPES)


def code(value: object) -> str:
    """``value`` in a code span when that is safe, else as escaped text."""
    value = str(value)
    return f"`{value}`" if _PLAIN.fullmatch(value) else text(value)
