"""What the tests and the benchmarks share: models built from configs with random weights
(``models``) and the real app in a pseudo-terminal (``terminal``)."""
