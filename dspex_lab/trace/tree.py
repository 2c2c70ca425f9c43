"""Read spans back as trees: navigation, search and a terminal rendering.

Trees are built when read, never stored: the journal keeps flat span rows and
:meth:`TraceTree.from_spans` rebuilds the hierarchy from ``parent_id``. A span
whose parent is missing (lost, or not stored) hangs under its trace's root and
is flagged ``orphan`` rather than dropped.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Iterable, Iterator
from typing import Any

from dspex_lab.trace.spans import Span

__all__ = ["TraceNode", "TraceTree"]

_PROMPT_LINES = 12
# How show() colours a line by the status it ends with; "timeout" and "cancelled" mark spans cut short.
_STATUS_STYLES = {"error": "red", "timeout": "yellow", "cancelled": "yellow"}


@dataclasses.dataclass(frozen=True)
class TraceNode:
    """A span with its children, as placed in a :class:`TraceTree`.

    Attributes:
        span: the span.
        children: child nodes, ordered by start time.
        depth: 0 for a root.
        orphan: True when the span's parent was missing and it was attached to the root instead.
    """

    span: Span
    _: dataclasses.KW_ONLY
    children: tuple[TraceNode, ...] = ()
    depth: int = 0
    orphan: bool = False

    def walk(self) -> Iterator[TraceNode]:
        """Yield this node and its descendants, depth first, in start order."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))


class TraceTree:
    """The span trees of one or more traces.

    Build one with :meth:`from_spans`.

    Args:
        roots: the root nodes, ordered by start time.
    """

    def __init__(self, roots: Iterable[TraceNode]) -> None:
        self.roots: tuple[TraceNode, ...] = tuple(roots)
        self._by_id = {node.span.span_id: node for node in self.walk()}

    @classmethod
    def from_spans(cls, spans: Iterable[Span]) -> TraceTree:
        """Build the trees from flat spans (any order, any number of traces).

        Args:
            spans: the spans.

        Returns:
            The tree.
        """
        ordered = sorted(spans, key=lambda item: (item.start_ns, -item.end_ns, item.span_id))
        known = {item.span_id for item in ordered}
        children: dict[str, list[Span]] = {}
        roots: list[Span] = []
        orphans: list[Span] = []
        for item in ordered:
            if item.parent_id is None:
                roots.append(item)
            elif item.parent_id in known and item.parent_id != item.span_id:
                children.setdefault(item.parent_id, []).append(item)
            else:
                orphans.append(item)

        # Spans caught in a parent cycle are unreachable from any root or orphan: cut each cycle loose at its
        # earliest span, which then counts as an orphan.
        reachable: set[str] = set()

        def reach(starts: Iterable[Span]) -> None:
            pending = [item.span_id for item in starts]
            while pending:
                span_id = pending.pop()
                if span_id not in reachable:
                    reachable.add(span_id)
                    pending.extend(child.span_id for child in children.get(span_id, ()))

        reach([*roots, *orphans])
        for item in ordered:
            if item.span_id not in reachable:
                children[item.parent_id].remove(item)
                orphans.append(item)
                reach([item])

        first_root_of_trace: dict[str, Span] = {}
        for item in roots:
            first_root_of_trace.setdefault(item.trace_id, item)
        orphan_ids: set[str] = set()
        for item in orphans:
            root = first_root_of_trace.get(item.trace_id)
            if root is None:
                # No root stored for this trace: the earliest orphan stands in for it.
                roots.append(item)
                first_root_of_trace[item.trace_id] = item
            else:
                children.setdefault(root.span_id, []).append(item)
            orphan_ids.add(item.span_id)

        def build(item: Span, depth: int, seen: frozenset[str]) -> TraceNode:
            kids = sorted(children.get(item.span_id, ()), key=lambda child: (child.start_ns, -child.end_ns))
            seen = seen | {item.span_id}
            return TraceNode(
                item,
                children=tuple(build(child, depth + 1, seen) for child in kids if child.span_id not in seen),
                depth=depth,
                orphan=item.span_id in orphan_ids,
            )

        roots.sort(key=lambda item: (item.start_ns, -item.end_ns))
        return cls(build(item, 0, frozenset()) for item in roots)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[TraceNode]:
        return self.walk()

    def get(self, span_id: str) -> TraceNode:
        """Return the node of a span.

        Args:
            span_id: the span's id.

        Returns:
            The node.

        Raises:
            KeyError: no such span in the tree.
        """
        return self._by_id[span_id]

    def walk(self) -> Iterator[TraceNode]:
        """Yield every node, depth first, roots in start order."""
        for root in self.roots:
            yield from root.walk()

    def find(self, text: str, *, kind: str | None = None) -> list[TraceNode]:
        """Return the nodes whose name, kind, error or attributes contain a text (case-insensitive).

        Args:
            text: the text to look for.
            kind: only nodes of this span kind.

        Returns:
            The matching nodes, in walk order.
        """
        needle = text.lower()
        found = []
        for node in self.walk():
            item = node.span
            if kind is not None and item.kind != kind:
                continue
            haystack = " ".join(
                (item.name, item.kind, item.error or "", json.dumps(item.json_attributes, ensure_ascii=False))
            )
            if needle in haystack.lower():
                found.append(node)
        return found

    def to_text(self, *, show_prompts: bool = False, width: int = 100) -> str:
        """Render the trees as indented text: one line per span with duration, tokens and status.

        A span cut short when its trial was given up shows its status (``timeout``
        or ``cancelled``) and ``unfinished``; a retried attempt (attribute
        ``attempt`` above 1, or a ``retry_cause``) is labelled ``attempt N`` with
        the cause of the retry.

        Args:
            show_prompts: under each LM span, also print its messages and completion.
            width: the line width.

        Returns:
            The rendering.
        """
        lines: list[str] = []
        for root in self.roots:
            _render(root, prefix="", last=True, top=True, lines=lines, show_prompts=show_prompts, width=width)
        return "\n".join(lines)

    def show(self, *, show_prompts: bool = False, width: int | None = None) -> None:
        """Print the rendering, coloured by status when ``rich`` is available.

        Args:
            show_prompts: also print LM messages and completions.
            width: the line width; the terminal's when omitted.
        """
        try:
            from rich.console import Console
            from rich.text import Text
        except ImportError:
            print(self.to_text(show_prompts=show_prompts, width=width or 100))
            return
        console = Console()
        text = self.to_text(show_prompts=show_prompts, width=width or console.width)
        for line in text.splitlines():
            style = _STATUS_STYLES.get(line.rstrip().rpartition(" ")[2])
            console.print(Text(line, style=style), soft_wrap=True)

    def __repr__(self) -> str:
        return f"TraceTree(roots={len(self.roots)}, spans={len(self)})"


def _render(
    node: TraceNode,
    *,
    prefix: str,
    last: bool,
    top: bool,
    lines: list[str],
    show_prompts: bool,
    width: int,
    parent: Span | None = None,
) -> None:
    item = node.span
    branch = "" if top else ("└─ " if last else "├─ ")
    # "attempt 2" rather than "attempt attempt 2": the kind is left out when the name starts with it.
    named = item.name if item.name.split(" ", 1)[0] == item.kind else f"{item.kind} {item.name}"
    label = f"{prefix}{branch}{named}"
    detail = _detail(item)
    if detail:
        label = f"{label}  {detail}"
    if node.orphan:
        label = f"{label}  (orphan)"
    right = f"{_format_duration(item.duration_ns):>10}  {item.status}"
    room = max(width - len(right) - 1, 10)
    if len(label) > room:
        label = label[: room - 1] + "…"
    lines.append(f"{label:<{room}} {right}")
    child_prefix = prefix if top else prefix + ("   " if last else "│  ")
    # A trial given up cuts every open span with one reason: it is printed once, on the outermost.
    repeated = parent is not None and parent.error == item.error and parent.status == item.status != "error"
    if item.error and not repeated:
        lines.extend(_wrapped(f"! {item.error}", child_prefix + "   ", width=width))
    if item.kind == "metric" and isinstance(item.json_attributes.get("feedback"), str):
        # What the metric said beyond its score is why it scored so: shown without asking for prompts.
        lines.extend(_wrapped(f"feedback: {item.json_attributes['feedback']}", child_prefix + "   ", width=width))
    if show_prompts and item.kind == "lm":
        attributes = item.json_attributes
        for message in attributes.get("messages") or []:
            role = message.get("role", "?") if isinstance(message, dict) else "?"
            content = message.get("content", "") if isinstance(message, dict) else message
            lines.extend(_wrapped(f"[{role}] {_as_text(content)}", child_prefix + "   ", width=width))
        if "completion" in attributes:
            lines.extend(
                _wrapped(f"[completion] {_as_text(attributes['completion'])}", child_prefix + "   ", width=width)
            )
    for index, child in enumerate(node.children):
        _render(
            child,
            prefix=child_prefix,
            last=index == len(node.children) - 1,
            top=False,
            lines=lines,
            show_prompts=show_prompts,
            width=width,
            parent=item,
        )


def _detail(item: Span) -> str:
    attributes = item.json_attributes
    parts = []
    if item.kind == "module" and isinstance(attributes.get("signature"), str):
        parts.append(f"[{attributes['signature']}]")
    if item.kind == "lm":
        total = attributes.get("total_tokens")
        if total is not None:
            parts.append(f"{total} tok ({attributes.get('prompt_tokens')}→{attributes.get('completion_tokens')})")
        if isinstance(attributes.get("cost"), (int, float)):
            parts.append(f"${attributes['cost']:.6f}")
        if attributes.get("cache_hit"):
            parts.append("cached")
        if attributes.get("temperature") is not None:
            parts.append(f"T={attributes['temperature']}")
    if item.kind in ("metric", "evaluation") and attributes.get("score") is not None:
        parts.append(f"score={attributes['score']}")
    if item.kind == "metric" and attributes.get("metric_lm_calls"):
        cost = attributes.get("metric_cost")
        priced = f" ${cost:.6f}" if isinstance(cost, (int, float)) else ""
        calls = attributes["metric_lm_calls"]
        parts.append(f"({calls} LM call{'' if calls == 1 else 's'}{priced})")
    if item.kind == "decision" and attributes.get("values"):
        parts.append(json.dumps(attributes["values"], ensure_ascii=False, sort_keys=True))
    attempt, cause = attributes.get("attempt"), attributes.get("retry_cause")
    retried = type(attempt) is int and attempt > 1
    if retried or cause:
        label = f"attempt {attempt}" if type(attempt) is int else "retried"
        if item.name != label:  # an attempt span is named so already
            parts.append(label)
        if cause:
            parts.append(f"(retry after {_as_text(cause)})")
    if attributes.get("unfinished") is True:
        parts.append("unfinished")
    return " ".join(parts)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1:
        return _as_text(value[0])
    return json.dumps(value, ensure_ascii=False)


def _wrapped(text: str, indent: str, *, width: int) -> list[str]:
    lines: list[str] = []
    room = max(width - len(indent), 20)
    for paragraph in text.splitlines() or [""]:
        lines.extend(indent + line for line in (textwrap.wrap(paragraph, room) or [""]))
        if len(lines) >= _PROMPT_LINES:
            # Prompts run to pages; the tree is for orientation, and the full text stays in the span.
            return [*lines[:_PROMPT_LINES], indent + "…"]
    return lines


def _format_duration(nanoseconds: int) -> str:
    seconds = nanoseconds / 1e9
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"
