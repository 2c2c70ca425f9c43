"""The chat adapter trials run with when the researcher chose none: DSPy's own, minus repeated work.

DSPy formats a call's system message (field descriptions, the field structure with a
placeholder per field, the instructions) from the signature alone, and does it again on
every call: for ``ChainOfThought`` on the lab LM that is a quarter of a call's CPU, most of
it building pydantic ``TypeAdapter``s for the placeholders. A run calls the same few
signatures thousands of times, so :class:`CachingChatAdapter` keeps each signature's
system message and formats everything else exactly as :class:`dspy.ChatAdapter` does.

It relies on DSPy's public adapter interface (plus one undocumented behaviour of
``Adapter.__init_subclass__``, undone in :mod:`dspex_lab._dspy_compat`):
``Adapter.format_system_message`` is the method DSPy documents for custom adapters to
override, and DSPy calls it with the signature as its only argument. Signatures are
classes that DSPy never mutates (``with_instructions`` and friends return new ones), so a
signature object is its own cache key; entries go with their signature (a weak-keyed
cache), so optimizations that make thousands of candidate signatures do not grow it. If
DSPy stops calling the method, the adapter is plain ``ChatAdapter``;
``tests/engine/test_adapter.py`` fails if the messages ever differ from
``ChatAdapter()``'s or the cache stops being used.

The runner installs it only when ``dspy.settings.adapter`` is None, the case where DSPy
itself would build a fresh ``ChatAdapter()`` per call; an adapter the researcher
configured is used as is.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any

from dspy import ChatAdapter

from dspex_lab._dspy_compat import keep_inherited_callback_wrappers

__all__ = ["CachingChatAdapter", "default_adapter"]


class CachingChatAdapter(ChatAdapter):
    """``dspy.ChatAdapter`` that formats each signature's system message once.

    Thread-safe: trials on many threads share one instance. ``hits`` and ``misses`` count
    lookups (for tests and monitoring). Traces name its spans ``ChatAdapter.format`` and
    ``ChatAdapter.parse``, as DSPy's own adapter's: what it sends and parses is the same.
    """

    display_name = "ChatAdapter"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._system: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def format_system_message(self, signature: Any) -> str:
        """Return ``ChatAdapter``'s system message for ``signature``, formatted on its first use only."""
        try:
            text = self._system.get(signature)
        except TypeError:  # not weak-referenceable or not hashable: never cached
            return super().format_system_message(signature)
        if text is not None:
            self.hits += 1
            return text
        text = super().format_system_message(signature)
        with self._lock:
            self.misses += 1
            with contextlib.suppress(TypeError):
                self._system[signature] = text
        return text


# DSPy's Adapter.__init_subclass__ wraps format and parse with its callbacks in every subclass, around
# ChatAdapter's already wrapped ones: a DSPy callback (a trace) would see each call twice. Keep ChatAdapter's.
keep_inherited_callback_wrappers(CachingChatAdapter, ("format", "parse"))


_shared: CachingChatAdapter | None = None
_shared_lock = threading.Lock()


def default_adapter() -> CachingChatAdapter:
    """Return the process's shared :class:`CachingChatAdapter` (made on first use)."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = CachingChatAdapter()
    return _shared
