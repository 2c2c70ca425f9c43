"""Bundled datasets: small, seeded tasks that run offline with the lab LM."""

from __future__ import annotations

from dspex_lab.datasets.arithmetic import TOPICS, arithmetic, parse_problem

__all__ = ["TOPICS", "arithmetic", "parse_problem"]
