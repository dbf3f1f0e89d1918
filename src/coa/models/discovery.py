"""What an OpenAI-compatible server offers, asked once: which server it is, its context
window, its parallel slots and its tokenizer.

The functions here read the servers' JSON and nothing else; the model's HTTP client asks.
Any reply that is not what it should be raises `Malformed`, which the client retries like
any other malformed reply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from coa.models.replies import dig, is_count, malformed

LLAMA_SERVER = "llama-server"
# Without a tokenizer, count a token per 3 characters: English prose averages about
# 4 characters a token with BPE vocabularies, so this over-counts and stays inside the window.
CHARS_PER_TOKEN_ESTIMATE = 3


# -- the server ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Server:
    kind: str  # LLAMA_SERVER or "openai-compatible"
    slots: int | None = None  # sequences decoded together (llama-server's -np)
    window: int | None = None  # tokens one request may hold, where /props says (llama.cpp: one slot's)

    @property
    def is_llama_server(self) -> bool:
        return self.kind == LLAMA_SERVER


def identify(props: Any) -> Server:
    """The server behind a GET {root}/props reply (None where there was none).

    llama.cpp's llama-server answers with `total_slots` (its -np) and
    `default_generation_settings.n_ctx`, the context of one slot: --ctx-size divided among
    the slots, and capped at the model's training context. That, not the model's training
    context, is what one request may hold.
    """
    n_ctx = dig(props, ("default_generation_settings", "n_ctx"))
    window = n_ctx if is_count(n_ctx) and n_ctx > 0 else None
    slots = dig(props, ("total_slots",))
    if window and is_count(slots) and slots > 0:
        return Server(LLAMA_SERVER, slots, window)
    return Server("openai-compatible", None, window)


def listed_window(listing: Any, model: str) -> int | None:
    """The context length in a GET {base}/models reply: vLLM's max_model_len, llama.cpp's n_ctx_train."""
    entries = listing.get("data") if isinstance(listing, dict) else None
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    for path in (("max_model_len",), ("meta", "n_ctx_train")):
        for entry in entries:
            if entry.get("id") in (model, None) and is_count(value := dig(entry, path)) and value > 0:
                return value
    return None


# -- tokenizers ---------------------------------------------------------------------------------
def token_count(data: Any) -> int:  # vLLM, llama-cpp-python: {"count": n, ...}
    count = dig(data, ("count",))
    if not is_count(count):
        raise malformed("count", count)
    return count


def token_list_length(data: Any) -> int:  # llama.cpp: {"tokens": [...]}
    tokens = dig(data, ("tokens",))
    if not isinstance(tokens, list):
        raise malformed("tokens", tokens)
    return len(tokens)


def tokenizers(model: str, llama_server: bool = False) -> list[tuple[str, Callable[[str], dict], Callable[[Any], int]]]:
    """The server tokenize endpoints coa knows, best first: (path under the root, payload, reader).
    llama-server's is known to be there, so the others are not tried on it."""
    llama = ("/tokenize", lambda t: {"content": t}, token_list_length)
    if llama_server:
        return [llama]
    return [
        ("/extras/tokenize/count", lambda t: {"input": t, "model": model}, token_count),
        ("/tokenize", lambda t: {"model": model, "prompt": t}, token_count),
        llama,
    ]


def estimate(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)


def tiktoken_encoding(model: str):
    try:
        import tiktoken

        try:
            return tiktoken.encoding_for_model(model)
        except KeyError:
            return tiktoken.get_encoding("o200k_base")
    except Exception:  # tiktoken fetches its tables once; offline that fails and we estimate
        return None


def piece_offsets(text: str, data: Any) -> list[int]:
    """Where in `text` each token starts (a character offset), from llama-server's reply to
    POST /tokenize {"content": text, "with_pieces": true}.

    A piece is a string, or a list of byte values where a token ends inside a UTF-8
    character; a token that starts inside a character gets that character's offset. Raises
    NotImplementedError where the reply has no pieces or its pieces do not spell `text` (a
    tokenizer that normalises), so that the caller counts instead.
    """
    tokens = dig(data, ("tokens",))
    if not isinstance(tokens, list):
        raise malformed("tokens", tokens)
    pieces = []
    for token in tokens:
        if not isinstance(token, dict):
            raise NotImplementedError("the server's tokenizer gives no pieces")
        piece = token.get("piece")
        if isinstance(piece, str):
            pieces.append(piece.encode())
        elif isinstance(piece, list) and all(type(b) is int and 0 <= b < 256 for b in piece):
            pieces.append(bytes(piece))
        else:
            raise malformed("a token's piece", piece)
    encoded = text.encode()
    starts, at = [], 0
    for piece in pieces:
        if not encoded.startswith(piece, at) and piece[:1] == b" " and encoded.startswith(piece[1:], at):
            piece = piece[1:]  # the space SentencePiece vocabularies put before the first word
        elif not encoded.startswith(piece, at):
            raise NotImplementedError("the server's token pieces do not spell the text")
        starts.append(at)
        at += len(piece)
    if at != len(encoded):
        raise NotImplementedError("the server's token pieces do not spell the text")
    # before[i]: how many characters start before byte i (continuation bytes are 10xxxxxx)
    before = list(accumulate(((byte & 0xC0) != 0x80 for byte in encoded), initial=0))
    return [before[start + 1] - 1 if start < len(encoded) else len(text) for start in starts]
