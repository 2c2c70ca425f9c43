"""Which LM a name means, and when an LM's endpoint must be refused before any request.

:func:`resolve_lm` turns the ``model`` of a context, a program variable or the CLI into an LM: a
``lab/...`` name is the offline lab LM, any other string is ``dspy.LM(name)`` (DSPy's own HTTP
client and cache). :func:`credentials_in_url` is the check every such LM passes first.
"""

from __future__ import annotations

import os
from typing import Any

import dspy

from dspex_lab.errors import ProgramSpecError
from dspex_lab.lm import DEFAULT_LM, LM_ENVIRONMENT_VARIABLE, lab_lm

__all__ = ["ENDPOINT_FIELDS", "credentials_in_url", "resolve_lm"]

#: The ``dspy.LM`` settings that hold an endpoint URL.
ENDPOINT_FIELDS = ("api_base", "base_url")

_LAB_PREFIX = "lab/"


def credentials_in_url(lm: Any) -> str | None:
    """Tell what is wrong when ``lm``'s endpoint URL carries credentials (``http://user:password@host/v1``).

    DSPy's HTTP client does not take credentials from a URL: it treats ``user:password@host`` as the
    host name, so every request fails to connect (``Name or service not known``) and the error text,
    recorded with each trial, quotes the password. Such an LM is refused before any request.

    Args:
        lm: any LM; only the endpoint settings (:data:`ENDPOINT_FIELDS`) of its ``kwargs`` are read.

    Returns:
        One sentence naming the setting and saying how to pass the credentials instead, quoting the
        URL without its user information; None when no endpoint carries any.
    """
    kwargs = getattr(lm, "kwargs", None)
    if not isinstance(kwargs, dict):
        return None
    for field in ENDPOINT_FIELDS:
        url = kwargs.get(field)
        if not isinstance(url, str):
            continue
        text = url.strip()
        scheme, separator, rest = text.partition("://")
        if not separator:
            scheme, rest = "", text
        authority_end = min((index for index in map(rest.find, "/?#") if index != -1), default=len(rest))
        _, at, host = rest[:authority_end].rpartition("@")
        if not at:
            continue
        # The query is left out too: it is where a URL carries a key when it carries one.
        path = rest[authority_end:].partition("?")[0].partition("#")[0]
        shown = f"{scheme}{separator}[REDACTED]@{host}{path}"
        return (
            f"the LM's {field} {shown!r} carries credentials in its URL, which DSPy's HTTP client does not "
            f"use: every request would fail to connect and the error text would quote them; remove them from "
            f"the URL and pass them as api_key=... (sent as 'Authorization: Bearer ...') or as "
            f"extra_headers={{'Authorization': 'Basic ' + base64 of 'user:password'}}"
        )
    return None


def resolve_lm(spec: str | dspy.BaseLM | None = None) -> dspy.BaseLM:
    """Turn an LM spec into an LM.

    Args:
        spec: None for the default (the ``DSPEX_LM`` environment variable if set,
            else ``"lab/small"``); a ``"lab/..."`` string for a lab LM; any other
            string for ``dspy.LM(spec)``; or a ``dspy.BaseLM``, returned as is.

    Returns:
        The LM.

    Raises:
        ProgramSpecError: the spec has another type, is empty or names an unknown lab model, or the
            LM's endpoint URL carries credentials (see :func:`credentials_in_url`).
    """
    if spec is None:
        spec = os.environ.get(LM_ENVIRONMENT_VARIABLE) or DEFAULT_LM
    if isinstance(spec, dspy.BaseLM):
        problem = credentials_in_url(spec)
        if problem is not None:
            raise ProgramSpecError(problem)
        return spec
    if not isinstance(spec, str):
        raise ProgramSpecError(
            f"an LM spec must be None, a model string (e.g. 'lab/small' or 'openai/gpt-4o-mini') or a dspy.BaseLM, "
            f"not {type(spec).__name__}"
        )
    spec = spec.strip()
    if not spec:
        raise ProgramSpecError("an LM spec string must not be empty")
    if spec.startswith(_LAB_PREFIX):
        return lab_lm(spec)
    try:
        return dspy.LM(spec)
    except (ValueError, TypeError) as error:
        raise ProgramSpecError(f"cannot build dspy.LM({spec!r}): {error}") from error
