"""The Textual face: the app (``app.py``: layout, keys, actions), its line to the model
worker (``worker_link.py``), its action registry and palette commands, the explorer's
state (``state/``), its panes, screens and widgets, the presenter and the themes, and
``serve/`` (the app in a browser: ``lenstui serve``'s server and the tabs' web driver). It
never imports the engine: the model lives behind ``lenstui.jobs``, in a child process by
default."""
