"""The explorer's state, apart from how it is drawn: the lens session, the pins, the
model switch."""
