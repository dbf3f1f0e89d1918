"""Fences around text from outside (a document, a model's output) in prompts.

The text goes between an opening and a closing tag that it cannot contain: the tag
carries a key derived from the text, lengthened until the text does not hold it, so
nothing inside can close the fence early and pose as the prompt's own words. The key is
a function of the text, so the same chunk is fenced alike in every prompt (and a
server's prompt cache still sees the same prefix).
"""

from __future__ import annotations

import hashlib
import re

KEY_CHARS = 6
# A fence tag as `fence` writes it. Small models sometimes echo the closing tag of the text
# they were shown at the end of their own output.
_TAG = re.compile(r"</?[a-z]+-[0-9a-f]{6,64}>")


def fence(text: str, name: str = "document") -> str:
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    size = KEY_CHARS
    # A text built to forge the tag holds a short key; none can hold its own full hash.
    while f"{name}-{key[:size]}" in text and size < len(key):
        size += 2
    tag = f"{name}-{key[:size]}"
    return f"<{tag}>\n{text}\n</{tag}>"


def unfence(text: str) -> str:
    """`text` without any fence tags a model copied into it."""
    return _TAG.sub("", text)
