"""Notebook front ends: widgets over the journal, the ``%dspex`` magics and the dashboard.

This layer may import ipywidgets, anywidget and panel. Nothing here is imported by ``import
dspex_lab``; ``dx.widgets`` loads it on first use, and each name loads only its own module (the
dashboard does not load the widgets, the magics do not load panel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dspex_lab._lazy import lazy_exports

if TYPE_CHECKING:
    from dspex_lab.notebook._dashboard import Dashboard, DashboardServer, serve_dashboard
    from dspex_lab.notebook._magics import register_magics
    from dspex_lab.notebook._trace_data import ExampleFields
    from dspex_lab.notebook._trace_viewer import TraceViewer
    from dspex_lab.notebook._widgets_browser import ExperimentBrowser
    from dspex_lab.notebook._widgets_controls import VariableControls
    from dspex_lab.notebook._widgets_convergence import LiveConvergenceWidget
    from dspex_lab.notebook._widgets_progress import RunProgress, show_run_progress

__all__ = [
    "Dashboard",
    "DashboardServer",
    "ExampleFields",
    "ExperimentBrowser",
    "LiveConvergenceWidget",
    "RunProgress",
    "TraceViewer",
    "VariableControls",
    "register_magics",
    "serve_dashboard",
    "show_run_progress",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "Dashboard": "dspex_lab.notebook._dashboard",
        "DashboardServer": "dspex_lab.notebook._dashboard",
        "serve_dashboard": "dspex_lab.notebook._dashboard",
        "register_magics": "dspex_lab.notebook._magics",
        "ExampleFields": "dspex_lab.notebook._trace_data",
        "TraceViewer": "dspex_lab.notebook._trace_viewer",
        "ExperimentBrowser": "dspex_lab.notebook._widgets_browser",
        "VariableControls": "dspex_lab.notebook._widgets_controls",
        "LiveConvergenceWidget": "dspex_lab.notebook._widgets_convergence",
        "RunProgress": "dspex_lab.notebook._widgets_progress",
        "show_run_progress": "dspex_lab.notebook._widgets_progress",
    },
)
