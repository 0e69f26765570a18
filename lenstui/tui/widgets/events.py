"""Messages the app sends to the panes it hosts in ``#inspector`` and ``#speak``.

A pane in one of the side slots (``#inspector``, ``#speak``) receives these on its own queue:

- ``TokenFocused``: the grid's cursor moved (``selected``: Enter or a click);
- ``ModelLoaded``: a model finished loading (plain facts: no tensors);
- ``WorkerReply`` (``lenstui.tui.worker_link``): results for requests it submitted with
  ``explorer(pane).submit(request, reply_to=pane)``.
"""

from __future__ import annotations

from textual.message import Message

from lenstui.tui.widgets.grid import GridCell


class TokenFocused(Message, bubble=False):
    def __init__(self, cell: GridCell, selected: bool = False) -> None:
        super().__init__()
        self.cell = cell
        self.selected = selected

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TokenFocused) and not message.selected


class ModelLoaded(Message, bubble=False):
    def __init__(self, info) -> None:  # info: lenstui.jobs.protocol.ModelInfo
        super().__init__()
        self.info = info
