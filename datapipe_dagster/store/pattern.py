"""Path patterns of file-folder tables: key fields, wildcards and alternatives.

``{name}`` is a key column (part of one path segment); ``*`` matches part of one segment; ``**/`` any
number of folders (none included); ``(jpg|png)`` one of the listed texts. A pattern without wildcards
gives every key its file paths directly (one per alternative, the first being where a new row is
written); a pattern with wildcards finds a key's file by listing the folder.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

_TOKEN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}|(\*\*/)|(\*\*)|(\*)|\(([^()/|]*(?:\|[^()/|]*)+)\)")


@dataclass
class _Part:
    kind: str  # "text", "key", "any", "deep", "alt"
    value: str | list[str]


class PathPattern:
    """A parsed path pattern.

    Args:
        pattern: the pattern text (a local path or the path part of a URL).
        integer_keys: key fields whose column is an integer (they match canonical digits only, so
            ``readme.json`` or ``007.json`` beside ``7.json`` are foreign files, not bad rows).
    """

    def __init__(self, pattern: str, integer_keys: set[str]):
        self.text = pattern
        self.parts: list[_Part] = []
        pos = 0
        for m in _TOKEN.finditer(pattern):
            if m.start() > pos:
                self.parts.append(_Part("text", pattern[pos : m.start()]))
            if m.group(1):
                self.parts.append(_Part("key", m.group(1)))
            elif m.group(2):
                self.parts.append(_Part("deep", "**/"))
            elif m.group(3) or m.group(4):
                self.parts.append(_Part("any", "*"))
            else:
                self.parts.append(_Part("alt", m.group(5).split("|")))
            pos = m.end()
        if pos < len(pattern):
            self.parts.append(_Part("text", pattern[pos:]))
        self.keys = [p.value for p in self.parts if p.kind == "key"]
        self.has_wildcards = any(p.kind in ("any", "deep") for p in self.parts)
        out: list[str] = []
        for p in self.parts:
            if p.kind == "text":
                out.append(re.escape(str(p.value)))
            elif p.kind == "key":
                body = "-?(?:0|[1-9][0-9]*)" if p.value in integer_keys else "[^/]+?"
                out.append(f"(?P<{p.value}>{body})")
            elif p.kind == "deep":
                out.append("(?:[^/]+/)*")
            elif p.kind == "any":
                out.append("[^/]*")
            else:
                out.append("(?:" + "|".join(re.escape(a) for a in p.value) + ")")
        self.regex = re.compile("".join(out) + r"\Z")
        first_special = next((i for i, p in enumerate(self.parts) if p.kind != "text"), len(self.parts))
        head = "".join(str(p.value) for p in self.parts[:first_special])
        self.root = head.rsplit("/", 1)[0] if "/" in head else "."
        if head.startswith("/") and self.root == "":
            self.root = "/"

    def candidates(self, parts: dict[str, str]) -> list[str] | None:
        """The paths a key's file may have, first the one a new file gets (None with wildcards)."""
        if self.has_wildcards:
            return None
        choices: list[list[str]] = []
        for p in self.parts:
            if p.kind == "text":
                choices.append([p.value])  # type: ignore[list-item]
            elif p.kind == "key":
                choices.append([parts[p.value]])  # type: ignore[index]
            else:
                choices.append(list(p.value))
        return ["".join(c) for c in itertools.product(*choices)]

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        return None if m is None else m.groupdict()
