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
# Chat-template markup (ChatML, Llama's, Mistral's): in a model's output it means the model wrote
# past its turn, so the output ends at the first turn marker; other markup is removed.
MARKUP = r"<\|[\w.-]+\|>|\[/?INST\]|<</?SYS>>|</?s>"
_TURN = re.compile(r"<\|(?:im_end|im_start|eot_id|end|endoftext|start_header_id|eom_id)\|>|\[INST\]|</s>")
_MARKUP = re.compile(MARKUP)
_OPENING = re.compile(rf"^(?:\s*(?:{MARKUP})\s*(?:assistant|model)?\b)+", re.IGNORECASE)  # a turn opened by the model itself


def fence(text: str, name: str = "document") -> str:
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    size = KEY_CHARS
    # A text built to forge the tag holds a short key; none can hold its own full hash.
    while f"{name}-{key[:size]}" in text and size < len(key):
        size += 2
    tag = f"{name}-{key[:size]}"
    return f"<{tag}>\n{text}\n</{tag}>"


def unfence(text: str) -> str:
    """A model's output without the fence tags it copied and without chat markup: cut at the first
    turn marker, other markup removed. Every answer, CU and note passes through here."""
    text = _TURN.split(_OPENING.sub("", text), maxsplit=1)[0]
    return _MARKUP.sub("", _TAG.sub("", text))
