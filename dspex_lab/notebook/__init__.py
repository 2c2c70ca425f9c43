"""Notebook front ends: widgets over the journal (this layer may import ipywidgets and anywidget).

Nothing here is imported by ``import dspex_lab``; ``dx.widgets`` loads it on first use.
"""

from dspex_lab.notebook._trace_viewer import TraceViewer

__all__ = ["TraceViewer"]
