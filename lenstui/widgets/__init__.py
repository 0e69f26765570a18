"""The explorer's panes, one per module: prompt, grid, status (and, from their own
issues, the token inspector and the speakability pane)."""

from lenstui.widgets.grid import GridCell, LensGrid
from lenstui.widgets.prompt import PRESETS, Preset, PromptPane
from lenstui.widgets.status import StatusBar

__all__ = ["GridCell", "LensGrid", "PRESETS", "Preset", "PromptPane", "StatusBar"]
