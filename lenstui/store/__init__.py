"""The disk: per-user paths, one atomic writer, the config, the prompt history, exports,
the list of models on this machine, and the crash log. No torch, no Textual."""
