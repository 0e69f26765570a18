"""Screens pushed over the explorer: attribution, compare, trajectory, aim distribution,
and the pin prompt."""
