"""The token inspector: readout neighbours (``neighbors``) and the geometry of the
readout they are measured in (``geometry``: the effective unembedding)."""
