"""Meet DSPy code where it already is: journal a DSPy script's own runs without rewriting it.

- :func:`autolog`: after one call, every ``dspy.Evaluate(...)`` call and every DSPy optimizer's
  ``compile`` in the process is journaled as experiments, trials and traces, through DSPy's
  public callbacks (``on_evaluate_*``, ``on_compile_*``, ``on_module_*``, ``on_lm_*``);
  :class:`AutologCallback` is the callback it registers.

This floor sits above ``evaluation`` (it reuses the journal's records, the trial and experiment
builders and the span recorder) and below the package root, which exports ``dx.autolog``.
"""

from __future__ import annotations

from dspex_lab.integrations._autolog import OPTIMIZER_NAMES, AutologCallback, autolog

__all__ = ["OPTIMIZER_NAMES", "AutologCallback", "autolog"]
