"""The explorer's state, apart from how it is drawn: the lens session, the pins, the
learned lenses, the causal lens (patches, sweeps, steering), the model switch."""
