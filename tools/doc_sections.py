"""Regenerated sections of the docs: the text between a begin and an end marker, replaced whole."""
from __future__ import annotations

import pathlib


def replace_section(path: pathlib.Path, begin: str, end: str, text: str) -> None:
    """Put ``text`` between the ``begin`` and ``end`` markers of ``path`` (each marker on its own line, kept)."""
    document = path.read_text()
    start, stop = document.index(begin) + len(begin), document.index(end)
    path.write_text(f"{document[:start]}\n{text}\n{document[stop:]}")
