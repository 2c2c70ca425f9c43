"""Optimization: SIMBA-C and DSPy's optimizers, every candidate evaluation journaled."""
