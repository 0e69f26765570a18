"""Screens pushed over the explorer: attribution, compare, trajectory, aim distribution,
the patch sweep, the lens evaluation plot, and the pin and path prompts."""
