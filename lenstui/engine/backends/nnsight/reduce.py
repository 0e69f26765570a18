"""The lens's reductions, run inside an nnsight trace: on this machine, or on NDIF's GPUs.

Everything here is shipped to the server by value (``cloudpickle.register_pickle_by_value``
in ``trace.py``): nnsight serializes each function by its source, and the server rebuilds
it with the globals it names. So this module imports torch and nothing else (NDIF's
sandbox whitelists torch, math and a few others, never lenstui), and every function takes
what it reads as arguments: the residual rows, the model's own final norm and unembedding
as nnsight envoys (calling an envoy inside a trace runs its module there, tensor-parallel
shards gathered), plain tensors and ints.

What comes back per grid is ``[rows, positions, k]`` top-k ids and logits plus a few
scalars per cell, never a ``[rows, positions, d_model]`` residual nor a ``[.., vocab]``
distribution: that is the point of reducing on the server.

The numbers are the ones ``engine/lens/readout.py`` computes (its module doc defines them):
the logits in float32 (on a half-precision model the matmul runs in the model's dtype, the
reductions in float32), entropy in nats, KL(final || row) against the model's own final
distribution at that position (the last block's output through the final norm), and each
target's rank as the count of logits strictly above it.
"""

import torch

# Positions per chunk of the readout: bounds the [positions, vocab] float32 logits held
# at once (256 x 128k vocabulary = 128 MiB).
POSITIONS_PER_CHUNK = 256


def read_rows(rows, final, norm, head, top_k, targets, track, apply_norm, translators=None):
    """Reduce lens rows to what a grid shows.

    ``rows``: the lens rows, each ``[P, d]`` (the positions to read, in order); ``final``:
    ``[P, d]`` the last block's output there (its distribution is every row's KL
    reference and its argmax each position's own top-1); ``norm``, ``head``: the final
    norm and the unembedding (callables, envoys in a trace); ``targets``: ``[P]`` target
    ids, or None for each position's own top-1; ``track``: ``[T]`` tracked ids;
    ``apply_norm``: read the rows through the final norm (False: the raw lens);
    ``translators``: None, or ``(per_row, raw_positions)``: per row None or a ``(matrix
    [d, d], bias [d] or None)`` pair (a learned lens reads ``row @ matrix.T + bias``), and
    ``raw_positions`` [P] bool, the positions read untranslated (the attention sink).

    Returns a dict of CPU tensors: ``top_ids`` [R, P, k] int32 and ``top_logits`` [R, P, k],
    ``log_z`` [R, P] (logsumexp of the row's logits), ``entropy`` and ``kl`` [R, P],
    ``target_logits`` and ``target_ranks`` [R, P, 2 + T] (the target, the position's own
    final top-1, then the tracked tokens), ``final_top1`` [P], and the prediction depth
    ``depth`` [2, P] (top-1 / top-k settle row, -1 for none).
    """
    with torch.no_grad():
        n_pos = final.shape[0]
        parts = []
        for start in range(0, n_pos, POSITIONS_PER_CHUNK):
            stop = min(n_pos, start + POSITIONS_PER_CHUNK)
            chunk_targets = None if targets is None else targets[start:stop]
            chunk_rows = [row[start:stop] for row in rows]
            chunk_translators = None
            if translators is not None:
                chunk_translators = (translators[0], translators[1][start:stop])
            parts.append(
                _read_chunk(
                    chunk_rows, final[start:stop], norm, head, top_k, chunk_targets, track, apply_norm, chunk_translators
                )
            )
        out = {}
        for key in parts[0]:
            dim = 0 if key == "final_top1" else 1
            out[key] = torch.cat([part[key] for part in parts], dim=dim)
        out["depth"] = settle_rows(out["target_ranks"][:, :, 1], top_k)
        return out


def _logits(head, x):
    return head(x).float()


def _read_chunk(rows, final, norm, head, top_k, targets, track, apply_norm, translators):
    final_logits = _logits(head, norm(final))
    final_log_p = final_logits.log_softmax(dim=-1)
    final_p = final_log_p.exp()
    final_top1 = final_logits.argmax(dim=-1)
    first = final_top1 if targets is None else targets.to(final_top1.device)
    wanted = [first[:, None], final_top1[:, None]]
    if track is not None and track.numel():
        wanted.append(track.to(final_top1.device)[None, :].expand(final_top1.shape[0], -1))
    wanted = torch.cat(wanted, dim=1)  # [P, 2 + T]
    top_ids, top_logits, log_z, entropy, kl, target_logits, target_ranks = [], [], [], [], [], [], []
    for index, row in enumerate(rows):
        x = row
        if translators is not None and translators[0][index] is not None:
            x = _translated(x, translators[0][index], translators[1])
        logits = _logits(head, norm(x) if apply_norm else x)  # [P, V]
        lse = logits.logsumexp(dim=-1)
        log_p = logits - lse[:, None]
        p = log_p.exp()
        entropy.append((-(p * log_p).sum(dim=-1)).clamp_min(0.0))
        kl.append((final_p * (final_log_p - log_p)).sum(dim=-1).clamp_min(0.0))
        top = logits.topk(top_k, dim=-1)
        top_ids.append(top.indices.to(torch.int32))
        top_logits.append(top.values)
        log_z.append(lse)
        chosen = logits.gather(1, wanted)  # [P, 2 + T]
        target_logits.append(chosen)
        target_ranks.append(
            torch.stack([(logits > chosen[:, j : j + 1]).sum(dim=-1) for j in range(chosen.shape[1])], dim=1).to(torch.int32)
        )
    return {
        "top_ids": torch.stack(top_ids).cpu(),
        "top_logits": torch.stack(top_logits).cpu(),
        "log_z": torch.stack(log_z).cpu(),
        "entropy": torch.stack(entropy).cpu(),
        "kl": torch.stack(kl).cpu(),
        "target_logits": torch.stack(target_logits).cpu(),
        "target_ranks": torch.stack(target_ranks).cpu(),
        "final_top1": final_top1.cpu(),
    }


def _translated(x, translator, raw_positions):
    """A learned lens's translator on one row (float32: its corrections are small), the
    positions in ``raw_positions`` left as they are."""
    matrix, bias = translator
    # NDIF runs a request under CUDA autocast to the model's dtype: not this product.
    with torch.autocast(device_type=x.device.type, enabled=False):
        moved = x.float() @ matrix.to(device=x.device, dtype=torch.float32).T
        if bias is not None:
            moved = moved + bias.to(device=x.device, dtype=torch.float32)
    keep = raw_positions.to(x.device)[:, None]
    return torch.where(keep, x.float(), moved).to(x.dtype)


def settle_rows(ranks, top_k):
    """``[2, P]``: per position, the first row from which the final top-1's rank (``ranks``
    [R, P]) stays 0 (top-1) / under ``top_k`` (top-k) in every later row; -1 when the last
    row is not (``core.lens_result.settle_row``, vectorised)."""
    out = []
    for below in (1, top_k):
        ok = (ranks >= 0) & (ranks < below)
        # Settled at row r: ok at r and at every row after it.
        settled = torch.flip(torch.cumprod(torch.flip(ok, [0]).to(torch.int64), dim=0), [0]).bool()
        n_rows = ranks.shape[0]
        first = torch.where(settled, torch.arange(n_rows, device=ranks.device)[:, None], n_rows).amin(dim=0)
        out.append(torch.where(first < n_rows, first, -1))
    return torch.stack(out)


def row_kl(rows_a, rows_b, norm, head, apply_norm):
    """``[R]``: KL(A || B) between the matching rows of two stacks (``[R, d]`` each), read
    through the final norm (unless ``apply_norm`` is False) and the unembedding."""
    with torch.no_grad():
        a = _logits(head, norm(rows_a) if apply_norm else rows_a).log_softmax(dim=-1)
        b = _logits(head, norm(rows_b) if apply_norm else rows_b).log_softmax(dim=-1)
        return (a.exp() * (a - b)).sum(dim=-1).clamp_min(0.0).cpu()


def cell_kl(rows_p, rows_c, norm, head, apply_norm):
    """``[R, P]``: KL(patched || clean) per cell, for two stacks ``[R, P, d]`` read alike."""
    with torch.no_grad():
        out = []
        for p_row, c_row in zip(rows_p, rows_c):
            out.append(row_kl(p_row, c_row, norm, head, apply_norm))
        return torch.stack(out)


# ---------------------------------------------------------------- walking the forward pass


def walk(sites, index, incl_mid, edits, captures):
    """Follow one forward pass in order (nnsight serves module values in execution order),
    applying ``edits`` where they land and reading the lens rows at positions ``index``.

    ``sites``: a dict of envoys: ``inputs`` (each block, then the final norm: entry i's
    input is row i, the residual after block i - 1), ``mids`` (each block's
    post-attention norm: its input is the mid residual), ``attns``, ``mlps``,
    ``out_projs`` (their inputs are the heads' outputs, concatenated), and ``n_heads``.
    ``edits``: tuples ``(kind, layer, start, stop, head, op, value)``: at ``kind``
    ("resid", "attn", "mlp", "head") of block ``layer``, positions ``start:stop`` (stop
    None: to the end), ``op`` "set" (to ``value``), "add" (``value``) or "zero".
    ``captures``: ``(kind, layer, head)`` sites whose value at every position comes back
    (``[P, ...]``, the first sequence of the batch).

    Returns ``(rows, captured)``: the lens rows (the embedding, then per block its mid
    residual when ``incl_mid`` and its output), each ``[len(index), d]`` of the first
    sequence, and the captured values in the order asked.
    """
    n = len(sites["inputs"]) - 1
    by_site = {}
    for edit in edits:
        by_site.setdefault((edit[0], edit[1]), []).append(edit)
    wanted = {(c[0], c[1]): c for c in captures}
    captured = {}
    rows = []
    for layer in range(n + 1):
        entry = sites["inputs"][layer]
        x = entry.input
        if ("resid", layer - 1) in by_site:
            x = _edited(x, by_site[("resid", layer - 1)], 0)
            entry.input = x
        if ("resid", layer - 1) in wanted:
            captured[("resid", layer - 1)] = x[0].clone()
        rows.append(x[0][index])
        if layer == n:
            break
        if ("head", layer) in by_site or ("head", layer) in wanted:
            proj = sites["out_projs"][layer]
            z = proj.input
            if ("head", layer) in by_site:
                z = _edited(z, by_site[("head", layer)], sites["n_heads"])
                proj.input = z
            if ("head", layer) in wanted:
                head = wanted[("head", layer)][2]
                captured[("head", layer)] = _per_head(z, sites["n_heads"])[0, :, head].clone()
        if ("attn", layer) in by_site or ("attn", layer) in wanted:
            attn = sites["attns"][layer]
            out = attn.output
            first = out[0] if isinstance(out, tuple) else out
            if ("attn", layer) in by_site:
                first = _edited(first, by_site[("attn", layer)], 0)
                attn.output = (first, *out[1:]) if isinstance(out, tuple) else first
            if ("attn", layer) in wanted:
                captured[("attn", layer)] = first[0].clone()
        if incl_mid:
            rows.append(sites["mids"][layer].input[0][index])
        if ("mlp", layer) in by_site or ("mlp", layer) in wanted:
            mlp = sites["mlps"][layer]
            out = mlp.output
            if ("mlp", layer) in by_site:
                out = _edited(out, by_site[("mlp", layer)], 0)
                mlp.output = out
            if ("mlp", layer) in wanted:
                captured[("mlp", layer)] = out[0].clone()
    return rows, [captured[(c[0], c[1])] for c in captures]


def _per_head(z, n_heads):
    return z.reshape(*z.shape[:-1], n_heads, z.shape[-1] // n_heads)


def _edited(x, edits, n_heads):
    """``x`` [b, m, ...] with the edits applied at their positions, for every sequence of
    the batch (a new tensor: the model's own is not written in place)."""
    x = x.clone()
    view = _per_head(x, n_heads) if n_heads else x
    for _kind, _layer, start, stop, head, op, value in edits:
        target = view[:, start:stop] if head is None else view[:, start:stop, head]
        if op == "zero":
            target.zero_()
        elif op == "set":
            target.copy_(value.to(device=x.device, dtype=x.dtype).expand_as(target))
        else:
            target.add_(value.to(device=x.device, dtype=x.dtype))
    return x


def translated_rows(rows, translators):
    """The rows as a learned lens reads them (``translators`` as in :func:`read_rows`)."""
    if translators is None:
        return rows
    per_row, raw_positions = translators
    return [row if t is None else _translated(row, t, raw_positions) for row, t in zip(rows, per_row)]


def steer_direction(head, norm, toward, away):
    """``[d]``: the unit direction toward token ``toward``'s effective unembedding row (its
    unembedding row times the final norm's gain), minus token ``away``'s when given."""
    with torch.no_grad():
        weight = head.weight
        gain = getattr(norm, "weight", None)
        direction = weight[toward].float()
        if away is not None:
            direction = direction - weight[away].float()
        if gain is not None:
            direction = direction * gain.float()
        return direction / direction.norm()


def final_point(patched, clean, norm, head, targets):
    """One sweep point from the final rows ``[d]`` of a patched and the clean run: the
    targets' (``[T]``) probabilities and ranks in the patched row, its top-1 (id, logit,
    probability) and KL(patched || clean)."""
    with torch.no_grad():
        logits = _logits(head, norm(patched[None]))[0]
        log_p = logits.log_softmax(dim=-1)
        clean_log_p = _logits(head, norm(clean[None]))[0].log_softmax(dim=-1)
        chosen = logits[targets.to(logits.device)]
        top = logits.argmax()
        return {
            "probs": log_p[targets.to(logits.device)].exp().cpu(),
            "ranks": torch.stack([(logits > value).sum() for value in chosen]).cpu(),
            "top_id": top.cpu(),
            "top_logit": logits[top].cpu(),
            "top_prob": log_p[top].exp().cpu(),
            "kl": (log_p.exp() * (log_p - clean_log_p)).sum().clamp_min(0.0).cpu(),
        }
