"""Speakability: the certified check of one token (``check``, with its LP in ``lp`` and
its float64 geometry in ``geometry``), the whole-vocabulary scan (``scan``, cached by
``scan_cache``) and the aim measure (``aim``)."""
