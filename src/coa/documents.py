"""Reading a document from a file or stdin, refusing what is not text."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from coa.errors import InputError

# Above this share of undecodable bytes the input is not text in any useful sense.
MAX_BAD_BYTE_SHARE = 0.02


@dataclass
class Document:
    text: str
    source: str
    warnings: list[str] = field(default_factory=list)


def read_document(source: str | Path) -> Document:
    """Read `source` (a path, or "-" for stdin) as UTF-8 text."""
    name = str(source)
    if name == "-":
        data = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        path = Path(source)
        if path.is_dir():
            raise InputError(f"{name}: is a directory, not a text file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except OSError as e:
            raise InputError(f"{name}: cannot read ({e.strerror})") from None
    return decode_document(data, name)


def decode_document(data: bytes, name: str = "<document>") -> Document:
    if b"\x00" in data:
        raise InputError(f"{name}: looks binary (contains NUL bytes), expected text")
    warnings = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")
        bad = text.count("\ufffd") - data.count("\ufffd".encode())
        if bad > MAX_BAD_BYTE_SHARE * len(data):
            raise InputError(f"{name}: mostly not UTF-8 text ({bad} of {len(data)} bytes undecodable)") from None
        warnings.append(f"{name}: replaced {bad} invalid UTF-8 byte sequence(s) with U+FFFD")
    if not text.strip():
        raise InputError(f"{name}: the document is empty")
    return Document(text=text, source=name, warnings=warnings)
