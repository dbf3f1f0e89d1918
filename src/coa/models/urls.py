"""Server URLs in messages: credentials written into a URL never reach an error line or a log."""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote

# The userinfo of a URL: everything between "scheme://" (or the start) and the last "@" before
# the path. Greedy, so a password holding a raw "@" is hidden whole.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@")


def redact(url: str) -> str:
    """`url` with any user name and password replaced by `***`; host, port and path kept."""
    return _USERINFO.sub(lambda m: f"{m.group(1) or ''}***@", url, count=1)


def secrets_of(url: str, api_key: str | None = None) -> list[str]:
    """Every form in which the URL's credentials or the API key could come back in a server's text:
    as written, percent-decoded, and as the base64 of a basic-auth header. Longest first."""
    found = [api_key or ""]
    match = _USERINFO.match(url)
    if match:
        userinfo = match.group(0)[len(match.group(1) or "") : -1]
        user, _, password = userinfo.partition(":")  # the user name too: "https://TOKEN@host" is common
        found += [userinfo, unquote(userinfo), user, unquote(user), password, unquote(password)]
        found.append(base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode())
    return sorted({s for s in found if s}, key=len, reverse=True)


# A secret shorter than this is removed only where it stands alone, so that a one-letter key never
# rewrites ordinary words ("maximum" with the key "x").
SHORT_SECRET = 8


def scrub(text: str, url: str, api_key: str | None = None) -> str:
    """`text` with the URL shown redacted and every secret of `secrets_of` replaced by `***`: a long one
    wherever it occurs, a short one where neither neighbour is a letter, a digit, `-` or `_`."""
    text = text.replace(url, redact(url))
    for secret in secrets_of(url, api_key):
        if len(secret) >= SHORT_SECRET:
            text = text.replace(secret, "***")
        else:
            text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", "***", text)
    return text
