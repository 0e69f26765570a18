"""The Textual face: the app, its action registry and palette commands, the explorer's
state (``state/``), its panes, screens and widgets, the presenter and the themes. It
never imports the engine: the model lives behind ``lenstui.jobs``."""
