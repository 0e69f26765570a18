"""The core: what every face of lenstui shares, with no torch and no Textual.

Errors and callbacks, the lens kinds and limits, verdicts, token text and bytes, and the
result dataclasses the engine returns and the app, the CLI's ``--json`` and the tests
consume (``LensResult``, ``TokenReport``, ``SpeakResult``, ``ScanResult``, ``AimResult``,
``AttributionResult``, ``Comparison``, ``PatchResult``, ``SweepResult``, ``SteerResult``,
the learned lenses' ``FitReport`` and ``LensEval``), plus the forms a lens grid takes on
its way to the screen (``packed_grid``: across the process boundary; ``stream_grid``: a
run painted as its columns arrive).
"""
