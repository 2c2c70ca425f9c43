"""Which variables mattered: each variable's effect on the metric, with a confidence interval, from a run's journal.

An optimization run journals every configuration it scored (its candidates) and each one's score on
each example (the trials of its screening and validation evaluations; for DSPy's optimizers also
the configurations DSPy scored while compiling). :func:`run_importance` reads them back and
estimates, for every variable, how the metric moves with it, holding the other variables fixed.

**Features.** A candidate is described by numbers, one or more per variable:

- ``float``/``int``: its value. The effect is reported over the range the run tried (``0.2 → 0.9``):
  the slope times that range, so every row is on the metric's scale.
- ``bool``: 1 when true (``True vs False``).
- ``choice``/``module_type``: one indicator per value other than the baseline's
  (``dspy.ChainOfThought vs dspy.Predict``).
- lifted instructions (a ``text`` variable bound to ``instructions``): the number of rules
  appended to the baseline's text (``per rule added``), and whether the text was rewritten
  rather than extended (``rewritten vs the baseline's``: DSPy's MIPROv2 and GEPA rewrite it).
- ``demos``: their number (``per demo``).
- any other variable (free text, a type this module does not know): whether it differs from the
  baseline's value (``changed vs the baseline's``).

**Model.** Each configuration ``u`` scored on example ``e`` gives ``y[u, e]`` (the mean of its scored
trials there; a failed trial is no score, never a 0). The fit is the linear model
``y[u, e] = a[e] + x[u] · b + noise`` with one fixed effect ``a[e]`` per example, by least squares:
within each example the scores are centred, so an easy example's high scores say nothing about
the configurations that happened to meet it. What is left is the paired structure SIMBA-C's
acceptance tests use: every difference is between configurations on the same example, which is
where the power is (an example's difficulty is most of a score's variance). The coefficients are
partial effects: a merge that added a rule and a demo at once is split between them by the other
candidates that changed only one. A coefficient that the candidates cannot separate from the
others (a variable never changed, or always changed together with another) is *not estimable*
and says so: its effect is NaN, never 0.

**Intervals.** A cluster bootstrap over examples: the examples are resampled with replacement
(each resampled example keeps all its configurations' scores), the model is fitted again, and the
interval is the percentile interval of the resampled coefficients (2,000 resamples by default,
seeded). Examples are the unit of replication, as in every paired test of the package; scores of
one example are correlated across configurations, and the bootstrap keeps that correlation. A
coefficient identified in fewer than 95% of the resamples rests on a handful of examples and is
reported as not estimable.

**What the interval does not cover.** The estimate is conditional on the candidates the run made:
"rules added" is the average effect of the rules this run wrote, not of rules in general, and a
numeric variable's effect is a straight line through the values tried (a curved response, best
in the middle, shows as a small slope). The run's search chose which candidates to validate, so
validated configurations are the ones that screened well; screening scores of the rejected ones
are in the fit too, which limits that selection to the choice of examples, not of scores.

**Share.** Beside each effect, an optuna-style share (``optuna.importance.get_param_importances``
normalises its importances the same way): the variance, across the scored configurations, of
each variable's part of the fitted score, divided by the sum over variables. It ranks variables
by how much of the run's spread of scores they explain; it has no interval. Optuna's default
evaluator (fANOVA) fits a random forest to one number per trial; here each configuration is many
paired scores, so the effect and its interval come from those, and the share is only a ranking.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dspex_lab.errors import OptimizerError

__all__ = [
    "IMPORTANCE_COLUMNS",
    "ScoredConfigurations",
    "estimate_importance",
    "importance_html",
    "importance_text",
    "read_scored_configurations",
    "run_importance",
]

#: One row per contrast (a numeric variable, a bool, a choice's other value, rules, demos...).
IMPORTANCE_COLUMNS = (
    "variable", "kind", "contrast", "effect", "ci_low", "ci_high", "share", "candidates", "estimable", "note",
)  # fmt: skip

# The evaluations whose scores are a candidate's configuration as it is (not an exploration's hotter copy,
# not the held-out confirmation, which the importance leaves as untouched as the headline needs it).
_EVALUATION_ROLES = frozenset({"baseline", "candidate-validation", "candidate-screen"})
_RULE_PREFIX = "- "
# A coefficient counts as identified when its diagonal of the projector onto the design's row space is 1.
_IDENTIFIED = 1 - 1e-6
# Below this share of resamples in which a coefficient is identified, it is reported as not estimable.
_MIN_IDENTIFIED_SHARE = 0.95
# Examples with at least two configurations scored on them: fewer and nothing is estimable.
_MIN_EXAMPLES = 5


@dataclass(frozen=True)
class ScoredConfigurations:
    """The configurations a run scored and their scores per example: what the importance is estimated from.

    Attributes:
        variables: each variable's spec (``Variable.to_dict()``: ``type``, ``value``, ``target``...),
            the baseline's, whose values are the reference.
        configurations: each scored configuration's variable values, one mapping per configuration.
        scores: one row per (configuration, example): ``configuration`` (a position in
            ``configurations``), ``example_id`` and ``score`` (the mean of its scored trials there).
    """

    variables: Mapping[str, Mapping[str, Any]]
    configurations: Sequence[Mapping[str, Any]]
    scores: pd.DataFrame


@dataclass(frozen=True)
class _Feature:
    variable: str
    kind: str
    contrast: str
    column: np.ndarray  # one value per configuration
    scale: float  # the reported effect is the coefficient times this
    reference: float  # the baseline's value of the feature


# -- reading the journal -----------------------------------------------------------------------------------


def read_scored_configurations(journal: Any, run_id: str) -> ScoredConfigurations:
    """Read the configurations an optimization run scored, and their per-example scores, from its journal.

    Three reader calls whatever the run's size (candidates, nested evaluations, their trials), plus one
    per DSPy compile configuration. The baseline's, candidates' screening and validation evaluations count;
    for DSPy's optimizers, so do the configurations DSPy scored while compiling whose instructions and
    demos fit the lifted variables (``program_spec_is_configuration``).

    Raises:
        OptimizerError: the run has no candidates (it is not an optimization run, or has not started).
    """
    candidate_rows = journal.candidate_rows(run_id)
    baseline = next((row for row in candidate_rows if row.get("parent_id") is None), None)
    if baseline is None:
        raise OptimizerError(f"run {run_id} has no baseline candidate in the journal: nothing to estimate from")
    values = {str(row["candidate_id"]): dict(row.get("values") or {}) for row in candidate_rows}
    configuration_of: dict[str, int] = {}  # experiment id -> position in configurations
    configurations: list[Mapping[str, Any]] = []
    positions: dict[str, int] = {}  # one position per distinct set of values
    for child in journal.child_timeline(run_id):
        unit = _configuration_of(journal, child, values)
        if unit is not None:
            key = _key(unit)
            if key not in positions:
                positions[key] = len(configurations)
                configurations.append(unit)
            configuration_of[str(child["experiment_id"])] = positions[key]
    rows = [
        (configuration_of[str(row["experiment_id"])], str(row["example_id"]), float(row["score"]))
        for row in journal.children_trial_rows(run_id)
        if str(row["experiment_id"]) in configuration_of and row.get("score") is not None
        and row.get("status") != "error"
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["configuration", "example_id", "score"])
    scores = frame.groupby(["configuration", "example_id"], as_index=False, sort=True)["score"].mean()
    variables = (baseline.get("program_spec") or {}).get("variables") or {}
    return ScoredConfigurations(variables=variables, configurations=configurations, scores=scores)


def _configuration_of(
    journal: Any, child: Mapping[str, Any], values: Mapping[str, Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """Return the variable values a nested evaluation scored, or None when it is not one the importance reads."""
    role, candidate = child.get("role"), child.get("candidate")
    if role in _EVALUATION_ROLES and candidate in values:
        return values[str(candidate)]
    if role != "compile":
        return None
    record = journal.experiment(child["experiment_id"])
    if not (record.get("config") or {}).get("program_spec_is_configuration"):
        return None  # DSPy ran a configuration the lifted variables cannot hold: its values are unknown
    variables = (record.get("program_spec") or {}).get("variables") or {}
    return {name: variable.get("value") for name, variable in variables.items()}


def run_importance(
    journal: Any, run_id: str, *, confidence: float = 0.95, n_bootstrap: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Return each variable's effect on the metric in run ``run_id``, with its interval (see the module's notes).

    Returns:
        One row per contrast (:data:`IMPORTANCE_COLUMNS`), estimable ones first, by share.
    """
    return estimate_importance(
        read_scored_configurations(journal, run_id), confidence=confidence, n_bootstrap=n_bootstrap, seed=seed
    )


# -- features ----------------------------------------------------------------------------------------------


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _rules_and_rewrite(text: Any, base: str) -> tuple[int, int]:
    text = "" if text is None else str(text)
    if not text.startswith(base):
        return 0, 1
    return sum(line.startswith(_RULE_PREFIX) for line in text[len(base) :].splitlines()), 0


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _variable_features(name: str, spec: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[_Feature]:
    """Return one variable's features, one column each over the configurations (before dropping constant ones)."""
    kind = str(spec.get("type") or "variable")
    base = spec.get("value")
    seen = [row.get(name, base) for row in rows]

    def feature(contrast: str, column: Sequence[float], scale: float = 1.0, reference: float = 0.0) -> _Feature:
        return _Feature(name, kind, contrast, np.asarray(column, dtype=float), scale, reference)

    numbers = np.array([_number(value) for value in seen])
    if kind in ("float", "int") and np.isfinite(numbers).all():
        low, high = float(numbers.min()), float(numbers.max())
        return [feature(f"{low:.3g} → {high:.3g} (range tried)", numbers, high - low, _number(base))]
    if kind == "bool":
        return [feature("True vs False", [float(bool(value)) for value in seen])]
    if kind in ("choice", "module_type"):
        levels = sorted({_key(value) for value in seen} - {_key(base)})
        if not levels:  # only the baseline's value was tried: one row says so
            return [feature(f"another value vs {_label(base)}", [0.0] * len(seen))]
        return [
            feature(f"{_label(json.loads(level))} vs {_label(base)}", [float(_key(value) == level) for value in seen])
            for level in levels
        ]
    if kind == "text" and str(spec.get("target") or "").startswith("instructions"):
        pairs = [_rules_and_rewrite(value, str(base or "")) for value in seen]
        return [
            feature("per rule added", [rules for rules, _ in pairs]),
            feature("rewritten vs the baseline's", [rewritten for _, rewritten in pairs]),
        ]
    if kind == "demos":
        return [feature("per demo", [len(value) if isinstance(value, list) else 0 for value in seen])]
    return [feature("changed vs the baseline's", [float(_key(value) != _key(base)) for value in seen])]


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _features(scored: ScoredConfigurations) -> tuple[list[_Feature], list[_Feature]]:
    """Return the features that vary across the scored configurations, and one row per variable that never did.

    A variable with some varied feature lists no constant one (SIMBA-C appends rules and never rewrites
    instructions: "rewritten" would be a row that never changed beside the rules' row).
    """
    varied: list[_Feature] = []
    constant: list[_Feature] = []
    for name, spec in scored.variables.items():
        features = _variable_features(name, spec, scored.configurations)
        changing = [item for item in features if _varies(item.column)]
        varied.extend(changing)
        if not changing and features:
            constant.append(features[0])
    return varied, constant


def _varies(column: np.ndarray) -> bool:
    finite = column[np.isfinite(column)]
    return finite.size == column.size and finite.size > 0 and float(np.ptp(finite)) > 0


# -- estimation --------------------------------------------------------------------------------------------


def _within_products(design: np.ndarray, scores: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Return each example's cross products of the design and the scores, both centred within the example.

    Only examples scored for at least two configurations carry a paired difference; the others are left
    out (with an example's fixed effect, a lone score fits exactly). Returns ``(A, b)``: ``A[e]`` is
    ``Xc'Xc`` and ``b[e]`` is ``Xc'yc`` for example ``e``, so a fit on any resample of the examples is a
    weighted sum of them.
    """
    example_ids = scores["example_id"].to_numpy(dtype=str)
    _, index = np.unique(example_ids, return_inverse=True)
    informative = np.bincount(index)[index] >= 2
    _, index = np.unique(index[informative], return_inverse=True)
    rows = design[scores["configuration"].to_numpy(dtype=int)[informative]]
    scored = scores["score"].to_numpy(dtype=float)[informative]
    count = int(index.max()) + 1 if index.size else 0
    size = np.bincount(index, minlength=count).astype(float)
    mean_rows = np.stack([np.bincount(index, weights=column, minlength=count) for column in rows.T], axis=1)
    centred = rows - (mean_rows / size[:, None])[index]
    centred_scores = scored - (np.bincount(index, weights=scored, minlength=count) / size)[index]
    products = np.zeros((count, design.shape[1], design.shape[1]))
    np.add.at(products, index, centred[:, :, None] * centred[:, None, :])
    moments = np.zeros((count, design.shape[1]))
    np.add.at(moments, index, centred * centred_scores[:, None])
    return products, moments


def _solve(products: np.ndarray, moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the least-squares coefficients (minimum norm) and which of them are identified, batched."""
    inverse = np.linalg.pinv(products, rtol=1e-10, hermitian=True)
    coefficients = (inverse @ moments[..., None])[..., 0]
    # diag(pinv(A) A) is 1 exactly for a coefficient the design identifies, below 1 for one it cannot separate.
    identified = np.einsum("...ij,...ji->...i", inverse, products) > _IDENTIFIED
    return coefficients, identified


@dataclass(frozen=True)
class _Fit:
    coefficients: np.ndarray
    low: np.ndarray
    high: np.ndarray
    estimable: np.ndarray
    notes: list[str]


def _fit(design: np.ndarray, scores: pd.DataFrame, *, confidence: float, n_bootstrap: int, seed: int) -> _Fit:
    """Fit the example fixed-effects model and bootstrap it over examples (see the module's notes)."""
    width = design.shape[1]
    products, moments = _within_products(design, scores)
    examples = products.shape[0]
    nan = np.full(width, math.nan)
    if examples < _MIN_EXAMPLES:
        note = f"not estimable: {examples} examples were scored for two configurations or more (needs {_MIN_EXAMPLES})"
        return _Fit(nan, nan, nan, np.zeros(width, dtype=bool), [note] * width)
    total = products.sum(axis=0)
    spread = np.sqrt(np.clip(np.diag(total), 0, None))
    scale = np.where(spread > 0, spread, 1.0)  # standardised columns keep pinv's tolerance meaningful
    standard = products / np.outer(scale, scale)
    coefficients, identified = _solve(standard.sum(axis=0), (moments / scale).sum(axis=0))
    generator = np.random.default_rng(seed)
    weights = generator.multinomial(examples, np.full(examples, 1 / examples), size=n_bootstrap).astype(float)
    resampled, resampled_identified = _solve(np.einsum("be,eij->bij", weights, standard), weights @ (moments / scale))
    tail = (1 - confidence) / 2
    low, high, notes = nan.copy(), nan.copy(), []
    estimable = identified & (spread > 0)
    for column in range(width):
        kept = resampled[resampled_identified[:, column], column]
        share = kept.size / n_bootstrap
        if not estimable[column]:
            notes.append("not estimable: the candidates never changed it apart from other variables")
        elif share < _MIN_IDENTIFIED_SHARE:
            estimable[column] = False
            notes.append(f"not estimable: separable from the other variables in only {share:.0%} of resamples")
        else:
            low[column], high[column] = np.quantile(kept, [tail, 1 - tail])
            notes.append("")

    def unscaled(values: np.ndarray) -> np.ndarray:
        return np.where(estimable, values, math.nan) / scale

    return _Fit(unscaled(coefficients), unscaled(low), unscaled(high), estimable, notes)


def _shares(features: Sequence[_Feature], fit: _Fit, present: np.ndarray) -> dict[str, float]:
    """Return each variable's share of the variance of the fitted scores across the scored configurations."""
    parts: dict[str, np.ndarray] = {}
    for position, item in enumerate(features):
        if fit.estimable[position]:
            part = item.column[present] * fit.coefficients[position]
            parts[item.variable] = parts.get(item.variable, 0) + part
    variances = {name: float(np.var(part)) for name, part in parts.items()}
    total = sum(variances.values())
    return {name: variance / total for name, variance in variances.items()} if total > 0 else {}


def estimate_importance(
    scored: ScoredConfigurations, *, confidence: float = 0.95, n_bootstrap: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Return each variable's effect on the metric with its interval, from scored configurations.

    Args:
        scored: the configurations and their per-example scores (:func:`read_scored_configurations`).
        confidence: the intervals' confidence level.
        n_bootstrap: resamples of the examples for the intervals.
        seed: the resampling's seed (the same seed gives the same intervals).

    Returns:
        One row per contrast (:data:`IMPORTANCE_COLUMNS`): estimable ones first by the variable's share,
        then the others with ``effect`` NaN and a note saying why.

    Raises:
        OptimizerError: ``confidence`` is not between 0 and 1, or ``n_bootstrap`` is below 100.

    Example: a flag that adds exactly 0.25 on each of six examples, whatever their difficulty.

        >>> scores = pd.DataFrame(
        ...     [(flag, f"e{k}", k / 10 + 0.25 * flag) for flag in (0, 1) for k in range(6)],
        ...     columns=["configuration", "example_id", "score"],
        ... )
        >>> scored = ScoredConfigurations({"careful": {"type": "bool", "value": False}},
        ...                               [{"careful": False}, {"careful": True}], scores)
        >>> row = estimate_importance(scored).iloc[0]
        >>> row["contrast"], [round(float(row[name]), 3) for name in ("effect", "ci_low", "ci_high")]
        ('True vs False', [0.25, 0.25, 0.25])
    """
    if not 0 < confidence < 1:
        raise OptimizerError(f"importance: confidence must be between 0 and 1, got {confidence!r}")
    if not isinstance(n_bootstrap, int) or n_bootstrap < 100:
        raise OptimizerError(f"importance: n_bootstrap must be an integer of at least 100, got {n_bootstrap!r}")
    varied, constant = _features(scored)
    present = np.zeros(len(scored.configurations), dtype=bool)
    present[scored.scores["configuration"].to_numpy(dtype=int)] = True
    rows = []
    if varied:
        design = np.stack([item.column for item in varied], axis=1)
        fit = _fit(design, scored.scores, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed)
        shares = _shares(varied, fit, present)
        for position, item in enumerate(varied):
            effect, low, high = (float(ends[position]) * item.scale for ends in (fit.coefficients, fit.low, fit.high))
            changed = int(np.sum(item.column[present] != item.reference))
            share = shares.get(item.variable, math.nan)
            rows.append(_row(item, effect, low, high, share, changed, note=fit.notes[position]))
    for item in constant:
        rows.append(_row(item, math.nan, math.nan, math.nan, math.nan, 0, note="not estimable: never changed"))
    frame = pd.DataFrame(rows, columns=list(IMPORTANCE_COLUMNS))
    frame["order"] = np.where(frame["estimable"], -frame["share"].fillna(0), 1.0)
    return frame.sort_values(["order", "variable"], kind="stable").drop(columns="order").reset_index(drop=True)


def _row(
    item: _Feature, effect: float, low: float, high: float, share: float, changed: int, *, note: str
) -> dict[str, Any]:
    return {
        "variable": item.variable,
        "kind": item.kind,
        "contrast": item.contrast,
        "effect": effect,
        "ci_low": low,
        "ci_high": high,
        "share": share,
        "candidates": changed,
        "estimable": bool(math.isfinite(effect)),
        "note": note or None,
    }


# -- showing -----------------------------------------------------------------------------------------------

#: The one line every view prints under its importance table.
METHOD_NOTE = (
    "Effects on the metric, holding the other variables fixed: least squares with one fixed effect per example "
    "over every scored configuration's per-example scores (screening and validation), intervals by a cluster "
    "bootstrap over examples; share: each variable's part of the variance of the fitted scores. Measured on the "
    "data the search used, conditional on the candidates it made."
)


def _signed(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:+.3f}".replace("-0.000", "+0.000")


def _cells(row: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    """Return a row's effect, interval, share, candidates and note as text."""
    if not row["estimable"]:
        return "—", "", "", str(row["candidates"]), str(row["note"] or "not estimable")
    share = "" if not math.isfinite(row["share"]) else f"{row['share']:.0%}"
    interval = f"[{_signed(row['ci_low'])}, {_signed(row['ci_high'])}]"
    return _signed(row["effect"]), interval, share, str(row["candidates"]), ""


_HEADER = ("variable", "contrast", "effect", "{confidence:.0%} CI", "share", "candidates", "note")


def importance_text(frame: pd.DataFrame, *, confidence: float = 0.95) -> str:
    """Return an importance table (:func:`estimate_importance`'s) as plain text, one contrast per line."""
    if frame.empty:
        return "Which variables mattered: the run has no variables."
    header = tuple(name.format(confidence=confidence) for name in _HEADER)
    lines = [(str(row["variable"]), str(row["contrast"]), *_cells(row)) for row in frame.to_dict("records")]
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]

    def joined(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return "\n".join(["Which variables mattered", joined(header), *(joined(line) for line in lines), METHOD_NOTE])


def importance_html(frame: pd.DataFrame, *, confidence: float = 0.95) -> str:
    """Return an importance table as an HTML table, with the method in one line under it."""
    escape = html.escape
    if frame.empty:
        return "<p class='dspex-importance'>Which variables mattered: the run has no variables.</p>"
    cells = "".join(
        f"<th style='text-align:left'>{escape(name.format(confidence=confidence))}</th>" for name in _HEADER
    )
    lines = ["<table class='dspex-importance'>", f"<tr>{cells}</tr>"]
    for row in frame.to_dict("records"):
        texts = (str(row["variable"]), str(row["contrast"]), *_cells(row))
        lines.append("<tr>" + "".join(f"<td>{escape(text)}</td>" for text in texts) + "</tr>")
    lines.append("</table>")
    lines.append(f"<p><i>{escape(METHOD_NOTE)}</i></p>")
    return "\n".join(lines)


def importance_or_reason(estimate: Callable[[], pd.DataFrame]) -> tuple[pd.DataFrame | None, str | None]:
    """Run ``estimate`` for a view: the table, or why there is none (one line) when the journal cannot give it."""
    from dspex_lab.errors import DspexLabError

    try:
        return estimate(), None
    except DspexLabError as error:
        return None, f"Which variables mattered: not estimable ({error})"
