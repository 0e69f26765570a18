"""Models: loading one (``load``), the parts of the architectures the lens reads without
TransformerLens (``anatomy``), its chat template (``chat``), vocabulary look-ups
(``vocab``) and greedy generation (``generate``)."""
