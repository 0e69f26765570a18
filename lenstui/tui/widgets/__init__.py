"""Widgets the panes and screens are made of: the lens grid, the attribution view, the
status bar, and the messages the app sends its panes."""
