"""What the trace pages show of a trial and a span, shared by the TraceViewer widget and the dashboard.

A trial row in the journal holds its example's id and its prediction; the question and the gold answer
live in the dataset's stored examples. :class:`ExampleFields` joins them: the question is the example's
input fields, "expected" its gold fields (those the program outputs, not the example's metadata such as
``id`` or ``topic``), and the answer the prediction's same fields. :class:`SpanSearch` finds text in
every span of an experiment (names, prompts, completions, errors). The format functions write latency,
tokens and cost as a researcher reads them (``306 ms``, ``1,234``, ``$0.0042``). Everything here is plain
data: no widget and no panel.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from dspex_lab.errors import JournalError, ProgramSpecError
from dspex_lab.journal import JournalReader
from dspex_lab.providers import ModelPrice, model_price

__all__ = [
    "ExampleFields",
    "Prices",
    "SpanSearch",
    "comparison",
    "count",
    "detail_html",
    "format_cost",
    "format_latency",
    "format_tokens",
    "lm_columns",
    "number",
    "shorten",
    "span_detail",
]

# A cell of the trial list shows this much of a question or an answer; the whole text is its tooltip.
CELL_CHARACTERS = 300
# An experiment-wide search reports at most this many spans (a common word can match every span).
SEARCH_LIMIT = 500


def format_latency(seconds: Any) -> str:
    """Return a latency as ``"306 ms"`` (below a second) or ``"1.24 s"``; ``""`` when unknown."""
    if not _is_number(seconds):
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:,.0f} s"


def format_tokens(tokens: Any) -> str:
    """Return a token count with thousands separators (``"12,345"``); ``""`` when unknown."""
    return f"{int(tokens):,}" if _is_number(tokens) else ""


def format_cost(dollars: Any, *, unpriced: bool = False) -> str:
    """Return dollars as ``"$0.0042"`` (small amounts to two significant digits); ``"unpriced"`` when unknown.

    An unpriced model's calls are never shown as $0: ``unpriced`` alone, or ``"$0.01 + unpriced"``.
    """
    if not _is_number(dollars):
        return "unpriced" if unpriced else ""
    if dollars == 0:
        text = "$0"
    elif abs(dollars) >= 0.01:
        text = f"${dollars:.4f}"
    else:  # two significant digits, never in exponent notation ($0.000061, not $6.1e-05)
        text = f"${dollars:.{1 - math.floor(math.log10(abs(dollars)))}f}"
    return f"{text} + unpriced" if unpriced else text


def shorten(text: str, characters: int = CELL_CHARACTERS) -> str:
    """Return ``text`` on one line, cut to ``characters`` with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= characters else line[: characters - 1] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _text(fields: Mapping[str, Any]) -> str:
    """Return fields as one text: a lone field's value, else ``name: value`` pairs."""
    values = [(name, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
              for name, value in fields.items()]  # fmt: skip
    if len(values) == 1:
        return values[0][1]
    return "; ".join(f"{name}: {value}" for name, value in values)


def _output_names(program_spec: Any) -> list[str] | None:
    """Return the output field names of a spec's ``"inputs -> outputs"`` signature, or None if it has none."""
    signature = program_spec.get("signature") if isinstance(program_spec, Mapping) else None
    if not isinstance(signature, str) or "->" not in signature:
        return None
    outputs = signature.split("->", 1)[1]
    return [name.split(":", 1)[0].strip() for name in outputs.split(",") if name.split(":", 1)[0].strip()]


class ExampleFields:
    """An experiment's examples as the trial list shows them: question (inputs), expected (gold outputs).

    The gold fields are the example's fields that the program outputs (read from the program's
    signature, else from the fields its predictions hold); an example with none of them shows its
    non-input fields, as a metric would see them. Examples are read once, when the experiment's
    dataset was stored with it (up to ``MAX_STORED_EXAMPLES``); otherwise question and expected are
    empty and the trial list still shows the answer.

    Args:
        journal: the journal.
        record: the experiment's record (``journal.experiment(id)``).
    """

    def __init__(self, journal: JournalReader, record: Mapping[str, Any]) -> None:
        manifest = record.get("dataset_manifest") if isinstance(record.get("dataset_manifest"), Mapping) else {}
        self.inputs: list[str] = [str(name) for name in manifest.get("inputs") or []]
        self.outputs = _output_names(record.get("program_spec"))
        fingerprint = record.get("dataset_fingerprint")
        stored = journal.dataset_examples(fingerprint) if isinstance(fingerprint, str) and fingerprint else []
        # Each stored record is {"fields": ..., "inputs": [...]} (see dspex_lab.session.stored_examples).
        self._examples: dict[str, dict[str, Any]] = {}
        for example_id, stored_record in stored:
            fields = stored_record.get("fields") if isinstance(stored_record.get("fields"), Mapping) else {}
            self._examples[example_id] = dict(fields)
            if not self.inputs and isinstance(stored_record.get("inputs"), list):
                self.inputs = [str(name) for name in stored_record["inputs"]]

    def question(self, example_id: str) -> dict[str, Any]:
        """Return the example's input fields (empty if the example was not stored)."""
        fields = self._examples.get(example_id, {})
        return {name: fields[name] for name in self.inputs if name in fields}

    def expected(self, example_id: str, prediction: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Return the example's gold fields: those the program outputs (see the class)."""
        fields = self._examples.get(example_id, {})
        labels = {name: value for name, value in fields.items() if name not in self.inputs}
        outputs = self.outputs if self.outputs is not None else list(prediction or {})
        gold = {name: labels[name] for name in outputs if name in labels}
        return gold or labels

    def corrected_gold(
        self, example_id: str, prediction: Any, text: str, *, option: str | None = None
    ) -> dict[str, Any]:
        """Return a typed corrected gold as the example's gold fields (the CLI's ``--gold``, a view's gold box).

        A JSON object is taken as given; any other text is the value of the example's one gold field
        (see :meth:`expected`). An example with no stored gold, or several gold fields, needs the JSON
        object, which says which field is corrected, so a correction never lands in a field nobody meant.

        Args:
            example_id: the trial's example.
            prediction: the trial's stored prediction (JSON text or a dict).
            text: the corrected gold as typed.
            option: the command-line option the text came from: the error names it and shell-quotes its example.

        Raises:
            JournalError: a plain value for an example whose gold field is not known to be one.
        """
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        gold = list(self.expected(example_id, _prediction_fields(prediction)))
        if len(gold) != 1:
            named = f"its gold fields are {gold}" if gold else "its example was not stored with the experiment"
            example = '{"answer": "42"}'
            raise JournalError(
                f"{option or 'corrected gold'} {text!r:.60} does not say which field it corrects ({named}): "
                f"give a JSON object such as {repr(example) if option else example}"
            )
        return {gold[0]: text}

    def row(self, example_id: str, prediction: Any) -> dict[str, str]:
        """Return the trial list's ``question``, ``expected`` and ``answer`` texts (whole, not shortened).

        The answer is the prediction's gold fields (its reasoning and other outputs are in the trace).
        """
        predicted = _prediction(prediction)
        expected = self.expected(example_id, predicted)
        answer = {name: predicted[name] for name in expected if name in predicted} or predicted
        return {
            "question": _text(self.question(example_id)),
            "expected": _text(expected),
            "answer": _text(answer) if answer else "",
        }


def _prediction_fields(prediction: Any) -> dict[str, Any]:
    """Return a stored prediction's fields for finding its gold field; ``{}`` for text that is not a JSON object."""
    try:
        value = json.loads(prediction) if isinstance(prediction, str) else prediction
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _prediction(value: Any) -> dict[str, Any]:
    """Return a trial's stored prediction (JSON text or a dict) as a dict; ``{}`` for none."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {"prediction": value}
    if value is None:
        return {}
    return dict(value) if isinstance(value, Mapping) else {"prediction": value}


class SpanSearch:
    """Find text in every span of an experiment: kind, name, error and attributes (prompts, completions).

    The spans' text is read once, on the first search, and kept: later searches of the same experiment
    scan it in memory. Matching is case-insensitive; a quote or backslash also matches its JSON-escaped
    form (attributes are stored as JSON text).

    Args:
        journal: the journal.
        experiment_id: the experiment whose spans are searched.
    """

    def __init__(self, journal: JournalReader, experiment_id: str) -> None:
        self._journal = journal
        self._experiment_id = experiment_id
        self._haystacks: list[tuple[str, str, str, str, str, str]] | None = None

    def _read(self) -> list[tuple[str, str, str, str, str, str]]:
        if self._haystacks is None:
            self._haystacks = []
            for row in self._journal.span_rows(self._experiment_id):
                text = f"{row['kind']} {row['name']} {row['error'] or ''} {row['attributes'] or ''}"
                folded = text.casefold()
                self._haystacks.append(
                    (str(row["trace_id"]), str(row["span_id"]), str(row["kind"]), str(row["name"]), folded, text)
                )
        return self._haystacks

    def find(self, text: str, *, limit: int = SEARCH_LIMIT) -> tuple[list[dict[str, str]], int]:
        """Return up to ``limit`` matching spans (trial, span id, kind, name, a snippet) and the number matching."""
        needle = text.strip().casefold()
        if not needle:
            return [], 0
        escaped = json.dumps(needle, ensure_ascii=False)[1:-1]
        found: list[dict[str, str]] = []
        total = 0
        for trial_id, span_id, kind, name, haystack, text in self._read():
            at = haystack.find(needle)
            if at < 0 and escaped != needle:
                at = haystack.find(escaped)
            if at < 0:
                continue
            total += 1
            if len(found) < limit:
                # From the text as written where folding kept its length (it does, but for a few letters like ß).
                source = text if len(text) == len(haystack) else haystack
                snippet = shorten(source[max(at - 60, 0) : at + len(needle) + 60], 160)
                found.append({"trial_id": trial_id, "span_id": span_id, "kind": kind, "name": name, "snippet": snippet})
        return found, total

    def counts(self, text: str) -> dict[str, int]:
        """Return how many spans of each trial match ``text`` (trials without a match left out)."""
        needle = text.strip().casefold()
        if not needle:
            return {}
        escaped = json.dumps(needle, ensure_ascii=False)[1:-1]
        counts: dict[str, int] = {}
        for trial_id, _, _, _, haystack, _ in self._read():
            if needle in haystack or (escaped != needle and escaped in haystack):
                counts[trial_id] = counts.get(trial_id, 0) + 1
        return counts


def comparison(
    attributes: Mapping[str, Any], question: Mapping[str, Any], expected_fields: Iterable[str] | None
) -> dict[str, Any]:
    """Return a metric span's expected-vs-got, the expected side narrowed to the gold fields, with the question.

    Args:
        attributes: the metric span's attributes (``expected``, ``got``, ``score``, and ``feedback`` when the
            metric gave feedback text).
        question: the example's input fields, shown above the comparison.
        expected_fields: the program's output names (None: keep the fields the prediction answers).
    """
    expected, got = attributes.get("expected"), attributes.get("got")
    if isinstance(expected, Mapping) and isinstance(got, Mapping):
        names = list(expected_fields) if expected_fields is not None else list(got)
        gold = {name: expected[name] for name in names if name in expected}
        expected = gold or dict(expected)
    compared = {"question": dict(question), "expected": expected, "got": got, "score": attributes.get("score")}
    if isinstance(attributes.get("feedback"), str):
        compared["feedback"] = attributes["feedback"]
    return compared


def number(value: Any) -> float | None:
    """Return a stored number as a float; None for a missing value, a bool, text or NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if value != value else float(value)  # NaN (a missing score read through pandas) is no number


def count(value: Any) -> int | None:
    """Return a stored count (a non-negative int); None for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Prices:
    """Model prices looked up once per model for a trial's LM spans."""

    def __init__(self) -> None:
        self._known: dict[str, ModelPrice | None] = {}

    def cost(self, attributes: dict[str, Any]) -> float | None:
        """Return an LM span's cost: the one DSPy reported, else tokens times the model's price, else None."""
        reported = number(attributes.get("cost"))
        if reported is not None:
            return reported
        if attributes.get("cache_hit") is True:
            return 0.0  # a cache hit bills nothing (the trial's meter does not count it either)
        model = attributes.get("model")
        prompt, completion = count(attributes.get("prompt_tokens")), count(attributes.get("completion_tokens"))
        if not isinstance(model, str) or prompt is None or completion is None:
            return None
        if model not in self._known:
            try:
                self._known[model] = model_price(model)
            except ProgramSpecError:
                self._known[model] = None
        price = self._known[model]
        return None if price is None else price.cost(prompt, completion)


def lm_columns(attributes: dict[str, Any], prices: Prices) -> dict[str, Any]:
    """Return what an LM span's row shows: model, temperature, tokens and cost (None and ``unpriced`` if unknown)."""
    parameters = attributes.get("parameters") if isinstance(attributes.get("parameters"), dict) else {}
    temperature = attributes.get("temperature", parameters.get("temperature"))
    columns: dict[str, Any] = {
        "model": attributes.get("response_model") or attributes.get("model"),
        "temperature": number(temperature),
        "tokens_in": count(attributes.get("prompt_tokens")),
        "tokens_out": count(attributes.get("completion_tokens")),
        "lm_calls": 1,
    }
    if columns["tokens_in"] is None and columns["tokens_out"] is None:
        return columns | {"cost": None, "unpriced": False}  # no usage (a failed call): nothing to price
    cost = prices.cost(attributes)
    columns |= {"cost": cost, "unpriced": cost is None}
    if attributes.get("cache_hit") is True:
        columns["cached"] = True
    return columns


def span_detail(span: Any, fields: ExampleFields, example_id: str) -> dict[str, Any]:
    """Return what a span's detail pane shows: its kind, name, status, duration, attributes and, by kind, more.

    An LM span adds its ``usage`` (model, temperature, tokens, cost); a metric span adds its
    ``comparison`` (the example's question, the gold fields and the prediction). The attributes are read
    through the span, so they are redacted once more on read, like every other view of a span.

    Args:
        span: a ``dspex_lab.trace.Span``.
        fields: the experiment's examples.
        example_id: the example of the span's trial.
    """
    attributes = span.json_attributes
    detail: dict[str, Any] = {
        "id": span.span_id,
        "kind": span.kind,
        "name": span.name,
        "status": span.status,
        "error": span.error,
        "duration_ms": round(span.duration * 1000, 3),
        "attributes": attributes,
    }
    if span.kind == "lm":
        detail["usage"] = lm_columns(attributes, Prices())
    if span.kind == "metric":
        detail["comparison"] = comparison(attributes, fields.question(example_id), fields.outputs)
    return detail


def _html_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    return html.escape(text)


def _block(title: str, value: Any, class_name: str) -> str:
    """Return a titled block of text (a message, a completion, an input field), newlines kept."""
    return (
        f'<div class="dspex-block-title">{html.escape(title)}</div><pre class="{class_name}">{_html_text(value)}</pre>'
    )


def _comparison_html(compared: Mapping[str, Any]) -> str:
    """Return the question and an expected-vs-got table, fields that differ marked."""
    parts = [_block(str(name), value, "dspex-question") for name, value in (compared.get("question") or {}).items()]
    expected, got, score = compared.get("expected"), compared.get("got"), compared.get("score")
    if isinstance(expected, Mapping) and isinstance(got, Mapping):
        shared = [name for name in expected if name in got]
        names = shared + [name for name in [*expected, *got] if name not in shared]
        lines = [(str(name), expected.get(name), got.get(name)) for name in dict.fromkeys(names)]
    else:
        lines = [("value", expected, got)]
    rows = []
    for name, left, right in lines:
        differs = left is not None and right is not None and _html_text(left) != _html_text(right)
        rows.append(
            f'<tr class="{"dspex-differs" if differs else ""}" data-field="{html.escape(name)}">'
            f'<td>{html.escape(name)}</td><td class="dspex-expected">{"" if left is None else _html_text(left)}</td>'
            f'<td class="dspex-got">{"" if right is None else _html_text(right)}</td></tr>'
        )
    title = "expected vs got" + ("" if score is None else f" — score {score}")
    feedback = compared.get("feedback")
    return (
        "".join(parts) + f'<div class="dspex-block-title">{html.escape(title)}</div><table class="dspex-compare">'
        "<tr><th>field</th><th>expected</th><th>got</th></tr>"
        + "".join(rows)
        + "</table>"
        + ("" if feedback is None else _block("the metric's feedback", feedback, "dspex-feedback"))
    )


_DETAIL_STYLE = (
    "<style>.dspex-span-detail{font-size:13px}.dspex-span-detail .dspex-block-title{font-weight:bold;"
    "margin-top:8px;opacity:.8}.dspex-span-detail pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:2px 0;"
    "padding:4px 6px;background:#8881;border-radius:3px}.dspex-span-detail table{border-collapse:collapse;"
    "width:100%;table-layout:fixed}.dspex-span-detail td,.dspex-span-detail th{border:1px solid #8884;"
    "padding:2px 6px;vertical-align:top;text-align:left;white-space:pre-wrap;overflow-wrap:anywhere}"
    ".dspex-span-detail .dspex-differs td.dspex-expected,.dspex-span-detail .dspex-differs td.dspex-got"
    "{background:#e5484d26}.dspex-span-detail dl{display:grid;grid-template-columns:max-content 1fr;gap:0 10px;"
    "margin:4px 0}.dspex-span-detail dt{opacity:.7}.dspex-span-detail dd{margin:0}</style>"
)


def detail_html(detail: Mapping[str, Any]) -> str:
    """Return :func:`span_detail` as HTML (every text escaped): facts, question, expected vs got, prompt, completion."""
    attributes = dict(detail.get("attributes") or {})
    facts = [("status", detail.get("error") or detail.get("status")), ("duration", format_latency(
        (detail.get("duration_ms") or 0) / 1000))]  # fmt: skip
    usage = detail.get("usage")
    if usage:
        tokens = f"{format_tokens(usage.get('tokens_in') or 0)} in → {format_tokens(usage.get('tokens_out') or 0)} out"
        facts += [("model", usage.get("model")), ("temperature", usage.get("temperature", "the LM's default"))]
        facts += [("tokens", tokens), ("cost", "cached" if usage.get("cached") else format_cost(
            usage.get("cost"), unpriced=bool(usage.get("unpriced"))) or "—")]  # fmt: skip
    body = [f"<h4>{html.escape(str(detail.get('kind')))} · {html.escape(str(detail.get('name')))}</h4><dl>"]
    body += [f"<dt>{name}</dt><dd>{html.escape(str(value))}</dd>" for name, value in facts if value is not None]
    body.append("</dl>")
    if detail.get("comparison"):
        body.append(_comparison_html(detail["comparison"]))
        attributes.pop("expected", None)
        attributes.pop("got", None)
        attributes.pop("feedback", None)
    messages = attributes.pop("messages", None)
    for message in messages if isinstance(messages, list) else []:
        role = message.get("role", "message") if isinstance(message, Mapping) else "message"
        content = message.get("content") if isinstance(message, Mapping) else message
        body.append(_block(str(role), content, "dspex-message"))
    completion = attributes.pop("completion", None)
    if completion is not None:
        for text in completion if isinstance(completion, list) else [completion]:
            body.append(_block("completion", text, "dspex-completion"))
    body.append(_block("attributes", attributes, "dspex-attributes"))
    return _DETAIL_STYLE + '<div class="dspex-span-detail">' + "".join(body) + "</div>"
