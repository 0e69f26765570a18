"""How requests and results cross the pipe between the UI's process and the model's.

Plain pickle, except that a ``LensResult`` travels as a few numpy arrays and one table
of token texts (``core.packed_grid``) rather than tens of thousands of small objects:
the UI's side unpickles it in a few milliseconds, and makes cells only when it reads
them. Torch-free on both ends of the format.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from lenstui.core.lens_result import PENDING, LensResult
from lenstui.core.packed_grid import pack_lens_result, unpack_lens_result


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any):
        # A streamed grid's placeholders (whole PENDING columns) travel as they are.
        if type(obj) is LensResult and obj.grid and not any(cell is PENDING for cell in obj.grid[0]):
            return unpack_lens_result, pack_lens_result(obj)
        return NotImplemented


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    return pickle.loads(data)
