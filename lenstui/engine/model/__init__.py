"""Models: loading one (``load``), its chat template (``chat``), vocabulary look-ups
(``vocab``) and greedy generation (``generate``)."""
