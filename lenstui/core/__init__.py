"""The core: what every face of lenstui shares, with no torch and no Textual.

Errors and callbacks, the lens kinds and limits, verdicts, token text and bytes, and the
result dataclasses the engine returns and the app, the CLI's ``--json`` and the tests
consume (``LensResult``, ``TokenReport``, ``SpeakResult``, ``ScanResult``, ``AimResult``,
``AttributionResult``, ``Comparison``).
"""
