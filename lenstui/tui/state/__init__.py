"""The explorer's state and what changes it, apart from how it is drawn: the lens session
(``session``) and its runs (``lens_flow``; ``grid_run`` decides which run the grid shows),
the features that ride on them through one seam (``lens_feature``: the causal lens with its
patches, sweeps and steering, pins, learned lenses), and the model loads (``model_switch``)."""
