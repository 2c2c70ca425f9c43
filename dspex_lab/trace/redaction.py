"""Keep secrets out of spans: mask secret-named keys and API-key-shaped strings.

Two rules apply to every value that reaches a span:

* a mapping key that names a secret (``api_key``, ``Authorization``, ``x-api-key``,
  anything in :data:`SECRET_KEYS` or matching a pattern added with
  :func:`add_secret_pattern`) keeps the key but has its value replaced by
  :data:`REDACTED`;
* inside any string, substrings shaped like common API keys or bearer tokens
  (``sk-...``, ``AKIA...``, ``AIza...``, ``ghp_...``, ``hf_...``, ``Bearer ...``)
  are replaced by :data:`REDACTED`, and so is a key-like value of any shape that
  follows a word naming it (``Incorrect API key provided: abc123...``,
  ``token=...``, ``password: ...``); a password in a URL is masked and the user
  and host kept, with a scheme (``scheme://user:password@host``) or without one
  (``user:password@host:port``, as connection errors quote a URL's authority), and
  percent-encoded (``user%3Apassword%40host``).

Header containers (``headers``, ``extra_headers``, ``default_headers``, ...) get
one more rule: every header value is masked except a short list of harmless
ones (``Content-Type``, ``Accept``, ``User-Agent``, ...), since providers take
credentials under many names.

This is the one redaction policy of dspex_lab: spans use it at capture
(:func:`scrub`, which returns its argument unchanged, without copying, when
nothing needs masking, the common case on the hot path), and everything
persisted or displayed (experiment config, LM state, error messages,
tracebacks, exports, HTML) goes through :func:`redact_for_storage`.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

__all__ = [
    "HEADER_CONTAINER_KEYS",
    "REDACTED",
    "SECRET_KEYS",
    "add_secret_pattern",
    "is_clean_text",
    "is_secret_key",
    "mask_text",
    "redact",
    "redact_for_storage",
    "scrub",
]

REDACTED = "[REDACTED]"

# Key names are compared after lowercasing and turning "-" into "_", so "X-Api-Key" matches "x_api_key".
SECRET_KEYS = frozenset(
    {
        "access_token",
        "api_key",
        "api_secret",
        "api_token",
        "apikey",
        "auth_token",
        "authorization",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "bearer_token",
        "client_secret",
        "cookie",
        "id_token",
        "passwd",
        "password",
        "private_key",
        "proxy_authorization",
        "refresh_token",
        "secret",
        "secret_key",
        "session_token",
        "set_cookie",
        "x_api_key",
        "x_goog_api_key",
    }
)

# Token counts ("max_tokens", "prompt_tokens") must stay visible, so "token" only matches as a whole trailing word.
_DEFAULT_KEY_PATTERNS = (
    r"(?:^|_)api_?key(?:$|_)",
    r"(?:^|_)(?:access|auth|bearer|refresh|session|api)_token$",
    r"secret",
    r"passw(?:or)?d",
    r"credential",
)

# Each value pattern is paired with literal fragments that any match must contain; a plain substring test on
# those is far cheaper than running the regular expression over every prompt.
_DEFAULT_VALUE_PATTERNS = (
    (("sk-",), r"(?<![A-Za-z0-9])sk-(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{6,}"),
    (("AKIA", "ASIA"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    (("AIza",), r"\bAIza[0-9A-Za-z_\-]{30,}"),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,})"),
    (("xox",), r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"),
    (("hf_",), r"\bhf_[A-Za-z0-9]{20,}"),
    (("earer", "EARER"), r"(?i:\bbearer)\s+[A-Za-z0-9._~+/=\-]{8,}"),
)

# A key-like value after a word naming it, as provider errors quote it ("Incorrect API key provided: ...") and as
# URLs, logs and configs write it ("token=...", "password: ..."). The value needs a digit and a letter and 12+
# characters, so prose such as "the key insight" or "max_tokens: 1000" stays readable. The words are found with
# str.find on the lowercased text and the patterns matched only there: a regular expression searched over a whole
# prompt costs ten times more, and this runs on every string a span captures.
_LABEL_WORDS = ("key", "token", "secret", "passw")
_LABELLED_AT = re.compile(
    r"(?i:key|token|secret|passw(?:or)?d)s?\b(?:\s+provided)?[\"']?\s*[:=]?\s*[\"']?"
    r"(?P<value>(?=[A-Za-z0-9._~+/\-]*[0-9])(?=[A-Za-z0-9._~+/\-]*[A-Za-z])[A-Za-z0-9._~+/=\-]{11,}[A-Za-z0-9_~+/=\-])"
)
# A password is masked whatever its shape once it is assigned ("password: ...", "passwd=...").
_PASSWORD_AT = re.compile(r"(?i:passw(?:or)?d)s?[\"']?\s*[:=]\s*[\"']?(?P<value>[^\s\"',;]{3,})")
# scheme://user:password@host keeps the scheme, user and host; a password already masked is not matched again.
_URL_PASSWORD_REGEX = re.compile(r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*):(?!\[REDACTED\]@)[^/\s@]+@")
# user:password@host without a scheme, as connection errors quote a URL's authority ("failed to connect to
# user:pw@10.0.0.5:8000", "bad port in authority: 'user:pw@llm'"), or percent-encoded inside another URL
# (user%3Apw%40host). Prose such as "ratio 3:4@ noon", "10:30@office." or "mailto:bob@example.com" is left
# alone because what follows the "@" must look like a host: an IPv4 or bracketed IPv6 address, localhost, a
# dotted name ending in a letter label, or a single label that a port, a path or a closing quote follows.
_AT_SIGN = re.compile(r"@|%40")
_HOST_LIKE = re.compile(
    r"\[[0-9A-Fa-f:.]+\]"
    r"|(?:\d{1,3}\.){3}\d{1,3}(?![0-9A-Za-z\-])"
    r"|localhost(?![0-9A-Za-z\-])"
    r"|(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9\-]{0,61}[A-Za-z0-9](?![0-9A-Za-z\-])"
    r"|[A-Za-z0-9][A-Za-z0-9\-]{0,62}(?=:\d|/|%2[Ff]|['\"`>])"
)
# Everything up to the last character that ends a URL's userinfo when walking back from its "@". Passwords may
# hold most punctuation, "@" included, so only whitespace and what cannot be inside an authority or quotes one
# end it. The greedy ".*" finds the last one in C rather than a character-by-character loop.
_UP_TO_USERINFO = re.compile(r".*[\s/'\"`<>\\]", re.DOTALL)
# Words that, before a colon, make "word:name@host" an address rather than credentials.
_ADDRESS_LABELS = frozenset(
    {
        "bcc",
        "cc",
        "contact",
        "e-mail",
        "email",
        "from",
        "im",
        "mail",
        "mailto",
        "pres",
        "sip",
        "sips",
        "tel",
        "to",
        "xmpp",
    }
)
# Mappings under these keys hold HTTP headers; every value there is masked but the harmless ones below.
HEADER_CONTAINER_KEYS = frozenset({"default_headers", "extra_headers", "headers", "http_headers"})
_HARMLESS_HEADERS = frozenset(
    {
        "accept",
        "accept_encoding",
        "accept_language",
        "cache_control",
        "connection",
        "content_length",
        "content_type",
        "openai_beta",
        "user_agent",
    }
)

_lock = threading.Lock()
_key_patterns: list[str] = list(_DEFAULT_KEY_PATTERNS)
_extra_value_patterns: list[str] = []
_key_regex = re.compile("|".join(f"(?:{item})" for item in _key_patterns), re.IGNORECASE)
_value_regex = re.compile("|".join(pattern for _, pattern in _DEFAULT_VALUE_PATTERNS))
_value_hints: tuple[str, ...] = tuple(hint for hints, _ in _DEFAULT_VALUE_PATTERNS for hint in hints)
_extra_value_regex: re.Pattern[str] | None = None

_MAXIMUM_DEPTH = 24
_SCALARS = frozenset({int, float, bool, type(None)})
# Hashes of strings already scanned and found clean; cleared when full or when a value pattern is added.
_clean_texts: set[int] = set()
# Hashes of strings found clean; big enough to cover the strings of the trials between capture and storage.
_CLEAN_TEXTS_LIMIT = 65536
# Nesting this deep is not data anyone reads in a span; cutting it off also bounds the walk.
_TOO_DEEP = "[too deep]"


def add_secret_pattern(pattern: str, *, applies_to: str = "keys") -> None:
    """Register one more regular expression that marks something as secret.

    Args:
        pattern: a regular expression. For ``"keys"`` it is searched (case-insensitively)
            in normalised key names (lowercase, ``-`` turned into ``_``); for ``"values"``
            every match inside a string is masked.
        applies_to: ``"keys"`` or ``"values"``.

    Raises:
        ValueError: ``applies_to`` is neither, or the pattern does not compile.
    """
    global _key_regex, _extra_value_regex
    if applies_to not in ("keys", "values"):
        raise ValueError(f"applies_to must be 'keys' or 'values', got {applies_to!r}")
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"not a regular expression: {pattern!r}: {error}") from error
    with _lock:
        if applies_to == "keys":
            _key_patterns.append(pattern)
            _key_regex = re.compile("|".join(f"(?:{item})" for item in _key_patterns), re.IGNORECASE)
            # Cached answers were computed under the old patterns.
            _secret_key_cached.cache_clear()
        else:
            _extra_value_patterns.append(pattern)
            _extra_value_regex = re.compile("|".join(f"(?:{item})" for item in _extra_value_patterns))
            # Strings found clean before may match the new pattern.
            _clean_texts.clear()


def is_secret_key(key: object) -> bool:
    """Tell whether a mapping key names a secret.

    Args:
        key: the key; only strings can name secrets.

    Returns:
        True when the value stored under this key must be masked.
    """
    return isinstance(key, str) and _secret_key_cached(key)


@functools.lru_cache(maxsize=4096)
def _secret_key_cached(key: str) -> bool:
    normalised = key.lower().replace("-", "_")
    return normalised in SECRET_KEYS or _key_regex.search(normalised) is not None


def mask_text(text: str) -> str:
    """Replace API-key-shaped substrings of a string with :data:`REDACTED`.

    Args:
        text: any string.

    Returns:
        The same string object when nothing matched, else a masked copy.
    """
    if not _text_needs_masking(text):
        return text
    if any(hint in text for hint in _value_hints):
        text = _value_regex.sub(REDACTED, text)
    spans = _labelled_values(text)
    if spans:
        pieces, done = [], 0
        for start, end in spans:
            pieces += [text[done:start], REDACTED]
            done = end
        text = "".join(pieces) + text[done:]
    if "://" in text and "@" in text:
        text = _URL_PASSWORD_REGEX.sub(rf"\g<prefix>:{REDACTED}@", text)
    if "@" in text or "%40" in text:
        passwords = _authority_passwords(text)
        if passwords:
            pieces, done = [], 0
            for start, end in passwords:
                pieces += [text[done:start], REDACTED]
                done = end
            text = "".join(pieces) + text[done:]
    extra = _extra_value_regex
    if extra is not None:
        text = extra.sub(REDACTED, text)
    return text


def _labelled_values(text: str) -> list[tuple[int, int]]:
    """Return the sorted, disjoint spans of values that follow a word naming a secret."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few non-ASCII letters lowercase to two characters; positions would drift
        lowered = "".join(character.lower() if character.isascii() else "_" for character in text)
    spans: list[tuple[int, int]] = []
    for word in _LABEL_WORDS:
        start = lowered.find(word)
        while start != -1:
            # The word starts a word ("api_key" and "x-api-key" count: only a letter or digit before it does not).
            if start == 0 or not lowered[start - 1].isalnum() or lowered[start - 3 : start] == "api":
                found = _LABELLED_AT.match(text, start)
                if found is None and word == "passw":
                    found = _PASSWORD_AT.match(text, start)
                if found is not None:
                    spans.append(found.span("value"))
            start = lowered.find(word, start + 1)
    if len(spans) < 2:
        return spans
    spans.sort()
    merged = [spans[0]]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def is_clean_text(text: str) -> bool:
    """Tell whether a string holds nothing to mask (remembered for strings seen before).

    Args:
        text: any string.

    Returns:
        True when :func:`mask_text` would return it unchanged.
    """
    return hash(text) in _clean_texts or not _text_needs_masking(text)


def _text_needs_masking(text: str) -> bool:
    # Most strings recur (a predictor's system prompt, a completion seen again by the parser and by two modules):
    # remembering the hashes of strings found clean saves rescanning them on the hot path.
    fingerprint = hash(text)
    if fingerprint in _clean_texts:
        return False
    dirty = False
    for hint in _value_hints:
        if hint in text:
            dirty = _value_regex.search(text) is not None
            break
    if not dirty:
        dirty = bool(_labelled_values(text))
    if not dirty and "://" in text and "@" in text:
        dirty = _URL_PASSWORD_REGEX.search(text) is not None
    if not dirty and ("@" in text or "%40" in text):
        dirty = _authority_password_found(text)
    if not dirty:
        extra = _extra_value_regex
        dirty = extra is not None and extra.search(text) is not None
    if not dirty:
        if len(_clean_texts) >= _CLEAN_TEXTS_LIMIT:
            _clean_texts.clear()
        _clean_texts.add(fingerprint)
    return dirty


def _authority_password_found(text: str) -> bool:
    # A password already masked is not a secret any more: ignoring those keeps is_clean_text() true on what
    # mask_text() produced, so masking twice changes nothing and scrub() does not copy masked values again.
    return any(text[start:end] != REDACTED for start, end in _authority_passwords(text))


def _authority_passwords(text: str) -> list[tuple[int, int]]:
    """Return the spans of the passwords in ``user:password@host`` authorities, with or without a scheme.

    Each "@" (or "%40") followed by something host-like is walked back to the start of its userinfo, which
    stops at whitespace, a quote, a "/" or a percent-encoded "/" (so ``http%3A%2F%2Fuser%3Apw%40host`` yields
    ``pw``); the first colon (":" or "%3A") splits the user from the password. A walk never passes the previous
    host-like "@", which keeps this linear in the text's length whatever it holds.
    """
    spans: list[tuple[int, int]] = []
    floor = 0
    for found in _AT_SIGN.finditer(text):
        at, after = found.start(), found.end()
        if _HOST_LIKE.match(text, after) is not None:
            before = _UP_TO_USERINFO.match(text, floor, at)
            start = before.end() if before is not None else floor
            userinfo = text[start:at].lower()
            encoded_slash = userinfo.rfind("%2f")
            if encoded_slash != -1:
                start += encoded_slash + 3
                userinfo = userinfo[encoded_slash + 3 :]
            colons = [index for index in (userinfo.find(":"), userinfo.find("%3a")) if index != -1]
            if colons:
                colon = min(colons)
                password_start = start + colon + (1 if userinfo[colon] == ":" else 3)
                if colon > 0 and userinfo[:colon] not in _ADDRESS_LABELS and password_start < at:
                    spans.append((password_start, at))
            floor = after
    return spans


def redact(value: Any) -> Any:
    """Return a copy of a JSON-like value with every secret masked.

    Mappings, lists and tuples are rebuilt (tuples become lists, as in JSON);
    strings are masked with :func:`mask_text`; in a header mapping (under a key
    in :data:`HEADER_CONTAINER_KEYS`) every value but a harmless header's is
    masked; other values pass through.

    Args:
        value: a value built of dicts, lists, tuples, strings and scalars.

    Returns:
        The redacted copy.
    """
    return _redact(value, 0)


def _redact(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if depth >= _MAXIMUM_DEPTH:
        return _TOO_DEEP if isinstance(value, (dict, list, tuple)) else value
    if isinstance(value, dict):
        return {key: _redact_entry(key, item, depth) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(item, depth + 1) for item in value]
    return value


def _redact_entry(key: Any, item: Any, depth: int) -> Any:
    if is_secret_key(key):
        return REDACTED
    if isinstance(key, str) and key.lower() in HEADER_CONTAINER_KEYS and isinstance(item, dict):
        return {name: _redact_header(name, value, depth + 1) for name, value in item.items()}
    return _redact(item, depth + 1)


def _redact_header(name: Any, value: Any, depth: int) -> Any:
    if value is None or (isinstance(name, str) and name.lower().replace("-", "_") in _HARMLESS_HEADERS):
        return _redact(value, depth + 1)
    return REDACTED


def redact_for_storage(value: Any) -> Any:
    """Return a JSON-ready copy of anything about to be persisted or displayed, with every secret masked.

    This is what exports, journals and displays call on config dicts, LM state, error
    messages and tracebacks. Unlike :func:`redact`, which leaves objects it does not
    know by reference, it also turns mapping keys into strings and any other object
    into its masked ``str()``, so nothing unmasked can hide inside an object's text.

    Args:
        value: a string, a number, or a structure of dicts, lists and tuples.

    Returns:
        The masked copy (a string for a string).

    Examples:
        >>> redact_for_storage({"api_base": "https://user:hunter2@llm.example/v1", "temperature": 0.5})
        {'api_base': 'https://user:[REDACTED]@llm.example/v1', 'temperature': 0.5}
        >>> redact_for_storage("Incorrect API key provided: abcd1234efgh5678")
        'Incorrect API key provided: [REDACTED]'
    """
    return _redact(_storable(value, 0), 0)


def _storable(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if depth >= _MAXIMUM_DEPTH:
        return _TOO_DEEP
    if isinstance(value, dict):
        return {key if isinstance(key, str) else str(key): _storable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_storable(item, depth + 1) for item in value]
    return str(value)


def scrub(value: Any) -> Any:
    """Mask secrets at capture time, copying only when something must change.

    Only dicts, lists, tuples and strings are inspected; other objects are kept
    by reference and masked when the span is serialised (see :func:`redact`).

    Args:
        value: the value about to be stored in a span.

    Returns:
        ``value`` itself when it holds no secret, else a redacted copy.
    """
    return redact(value) if _needs_masking(value, 0) else value


def _needs_masking(value: Any, depth: int) -> bool:
    # One loop over an explicit stack rather than a call per container or string: this runs on every value the
    # recorder captures, on the trial's own thread. Strings already found clean cost one set lookup.
    clean, secret_key, scalars = _clean_texts, _secret_key_cached, _SCALARS
    pending = [(value, depth)]
    while pending:
        item, level = pending.pop()
        kind = type(item)
        if kind is str:
            if hash(item) not in clean and _text_needs_masking(item):
                return True
            continue
        if kind in scalars:
            continue
        if isinstance(item, str):
            if _text_needs_masking(item):
                return True
            continue
        if kind is dict or isinstance(item, dict):
            keys, children = item, item.values()
        elif kind is list or kind is tuple or isinstance(item, (list, tuple)):
            keys, children = (), item
        else:
            continue
        if level >= _MAXIMUM_DEPTH:
            return True  # cannot vouch for what lies below, so let redact() cut it off
        for key in keys:
            if (type(key) is str or isinstance(key, str)) and (secret_key(key) or key in HEADER_CONTAINER_KEYS):
                return True
        for child in children:
            child_kind = type(child)
            if child_kind is str:
                if hash(child) not in clean and _text_needs_masking(child):
                    return True
            elif child_kind not in scalars:
                pending.append((child, level + 1))
    return False
