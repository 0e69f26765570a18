"""The vocabulary readout on the embedded model, against TransformerLens' own unembedding."""

from __future__ import annotations

import torch

from testkit.readout_reference import check_against_transformer_lens, residual_stack


def test_matches_transformer_lens_on_the_embedded_model(embedded):
    vectors, n_pos = residual_stack(embedded, "The Eiffel Tower is located in the city of")
    assert embedded.d_vocab % 4000 != 0
    rows = vectors.view(-1, n_pos, vectors.shape[-1])[::6].reshape(-1, vectors.shape[-1])  # a few rows
    rows = torch.cat([rows, vectors[-n_pos:]])  # ... and the final row last (the KL reference)
    stats = check_against_transformer_lens(embedded, rows, n_pos, top_k=10, block=4000)
    assert torch.all(stats.kl[-n_pos:] == 0)
