"""Screens pushed over the explorer: attribution, compare, trajectory, the patch sweep,
the lens evaluation, the aim distribution, and the pin and path prompts."""
