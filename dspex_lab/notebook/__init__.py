"""Notebook front ends: widgets over the journal (this layer may import ipywidgets and anywidget).

Nothing here is imported by ``import dspex_lab``; ``dx.widgets`` loads it on first use.
"""

from dspex_lab.notebook._dashboard import Dashboard, DashboardServer, serve_dashboard
from dspex_lab.notebook._trace_viewer import TraceViewer
from dspex_lab.notebook._widgets_browser import ExperimentBrowser
from dspex_lab.notebook._widgets_controls import VariableControls
from dspex_lab.notebook._widgets_progress import RunProgress

__all__ = [
    "Dashboard",
    "DashboardServer",
    "ExperimentBrowser",
    "RunProgress",
    "TraceViewer",
    "VariableControls",
    "serve_dashboard",
]
