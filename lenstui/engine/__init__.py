"""Pure computation on models: never imports Textual.

Every public function returns plain dataclasses (ids, floats, strings) that the app,
the CLI's --json output and the tests all consume.
"""

from lenstui.engine.errors import Cancelled, LenstuiError

__all__ = ["Cancelled", "LenstuiError"]
