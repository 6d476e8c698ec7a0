#!/usr/bin/env python3
"""Print the README's commands of one kind (``install`` or ``test``), one per line.

README.md marks each command with an HTML comment on the line before its code block:
``<!-- command: test -->``. `.ci/run` runs the ``test`` ones, so CI runs exactly what a new
user runs; tests/cli/test_readme.py checks the markers are there.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"<!-- command: (\w[\w-]*) -->\s*\n```(?:sh|bash|console)?\n(.*?)\n```", re.S)


def commands(kind: str, text: str | None = None) -> list[str]:
    text = README.read_text() if text is None else text
    return [body.strip() for k, body in _BLOCK.findall(text) if k == kind]


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "test"
    for line in commands(kind):
        print(line)
