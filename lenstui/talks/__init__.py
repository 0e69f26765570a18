"""Talks: the talk-file format (``format``: torch-free) and resolving a scene on a loaded
model (``resolve``: uses the engine)."""
