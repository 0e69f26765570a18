"""lenstui: a terminal explorer for the insides of transformer language models."""

__version__ = "0.1.0"
