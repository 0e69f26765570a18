"""Worker handlers for the speakability requests (``CheckSpeakable``, ``ScanVocabulary``).

Register them with ``app.register_handler(CheckSpeakable, speak_handler)`` and
``app.register_handler(ScanVocabulary, scan_handler)``. A handler runs on the worker
thread as ``handler(model, request, ctx)``; ``ctx`` offers ``should_stop()``,
``progress(message, fraction)`` and ``checkpoint()`` (which raises Cancelled when
superseded and, for a long job, first serves queued short requests). Nothing here
imports Textual or the worker module.
"""

from __future__ import annotations

from lenstui.engine.scan import load_cached_scan, scan_vocabulary
from lenstui.engine.speak import check_speakable


def speak_handler(model, request, ctx):
    """-> SpeakResult for ``request.token_id``."""
    return check_speakable(
        model,
        request.token_id,
        should_stop=ctx.should_stop,
        progress=ctx.progress,
    )


def scan_handler(model, request, ctx):
    """-> ScanResult. Between chunks it calls ``ctx.checkpoint()``, so lens runs and
    token checks are served while the scan runs, and a cancel keeps what is done."""
    if request.cached_only:
        return load_cached_scan(model)

    def between_chunks() -> bool:
        ctx.checkpoint()  # raises Cancelled when superseded
        return False

    return scan_vocabulary(
        model,
        should_stop=between_chunks,
        progress=ctx.progress,
        resume=request.resume,
        limit=request.limit,
    )
