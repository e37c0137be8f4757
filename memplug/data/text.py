"""Decoding source files into the text every corpus stores (UTF-8, ``\\n`` line ends)."""

from __future__ import annotations

__all__ = ["decode_text"]


def decode_text(raw: bytes, *, strict: bool = False) -> str:
    """UTF-8 text with a leading byte-order mark removed and ``\\r\\n`` / ``\\r`` turned into ``\\n``.

    Bytes that are not UTF-8 are read as Windows-1252 (old Gutenberg files), or, with
    ``strict=True``, raise :class:`UnicodeDecodeError` (the caller skips the file).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if strict:
            raise
        text = raw.decode("cp1252", errors="replace")
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
