"""Bounded-memory message passing: per-pair work in chunks of center atoms, recomputed in the backward pass.

A message-passing block builds per-pair tensors (P, F) (filters, messages),
and autograd keeps several of them for the backward pass: at 10^5 atoms with
~40 neighbors each that is 2 GB per tensor. :func:`chunked_pair_sum` instead
runs the per-pair work for one chunk of center atoms at a time without a
graph and keeps only the chunk's inputs; the backward pass rebuilds the
chunk's graph on those inputs and differentiates it (activation
checkpointing). The backward is itself built from differentiable operations,
so double backward (force training) still works. Memory is
then O(N F) per block plus one chunk's temporaries; the price is one more
forward of the per-pair work. The sums are the same as the whole-system ones
(the same additions, in the same order per center).

SchNet in eval mode uses :mod:`nnp.nn.filter_conv` instead: chunks of filters
with an analytic first-order backward, no recomputed graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, List, Tuple

import torch
from torch import nn


def sort_pairs_by_center(i: torch.Tensor) -> torch.Tensor | None:
    """Permutation (P,) that sorts pairs by center ``i`` (stable), or None when they already are.

    Neighbor lists of one large structure come out sorted (cell lists run over
    centers in order), so the check usually saves the sort.
    """
    if i.shape[0] < 2 or bool((i[1:] >= i[:-1]).all()):
        return None
    return torch.argsort(i, stable=True)


#: Bytes of saved autograd state a model's whole-system graph may take before its
#: large-system path (chunks, no per-pair tensors kept) takes over. Below it the whole
#: graph is the faster path; 3 GB keeps 10^4 atoms of a metal on it for every model
#: of conf/model at its default size.
GRAPH_BUDGET = 3 << 30


def pairs_within_budget(bytes_per_pair: int, budget: int | None = None) -> int:
    """The most pairs whose whole-system graph, at ``bytes_per_pair`` of saved state each, fits ``budget``
    (default :data:`GRAPH_BUDGET`): a model's ``chunk_above``."""
    return int((GRAPH_BUDGET if budget is None else budget) // max(1, int(bytes_per_pair)))


#: At most about this many chunks: each chunk's backward also writes a gradient of
#: every node tensor it reads, (N, F), so the time of that part grows with N x chunks.
MAX_CHUNKS = 64


def center_chunks(i: torch.Tensor, n_atoms: int, pairs_per_chunk: int) -> List[Tuple[int, int, int, int]]:
    """``(a0, a1, p0, p1)`` per chunk: atoms ``a0:a1`` and their pairs ``p0:p1``.

    ``i`` (P,) must be sorted. Chunks hold whole atoms and about ``pairs_per_chunk``
    pairs each (more when one atom alone has more neighbors), or P / MAX_CHUNKS
    when that is more (then per-chunk memory grows with N, but slowly: 10^5 Cu
    atoms, SchNet: 66k pairs per chunk, ~35 MB per (pairs, F) tensor).
    """
    ends = torch.cumsum(torch.bincount(i, minlength=n_atoms), 0)
    # the first atom whose pairs end at or beyond each multiple of the chunk size
    n_pairs = int(ends[-1]) if n_atoms > 0 else 0
    pairs_per_chunk = max(pairs_per_chunk, -(-n_pairs // MAX_CHUNKS))
    marks = torch.arange(pairs_per_chunk, max(n_pairs, pairs_per_chunk), pairs_per_chunk, device=i.device)
    cuts = torch.unique(torch.searchsorted(ends, marks, right=False) + 1).tolist()
    stops = [c for c in cuts if 0 < c < n_atoms] + [n_atoms]
    ends_list: List[int] = ends.tolist()
    bounds: List[Tuple[int, int, int, int]] = []
    a0 = 0
    for a1 in stops:
        if a1 <= a0:
            continue
        bounds.append((a0, a1, 0 if a0 == 0 else ends_list[a0 - 1], ends_list[a1 - 1]))
        a0 = a1
    return bounds


class _Recomputed(torch.autograd.Function):
    """``fn(*tensors[:n_inputs])`` run without a graph, rebuilt and differentiated in the backward.

    (torch.utils.checkpoint does the same, but its first call imports torch._dynamo:
    3-10 s here.) ``tensors[n_inputs:]`` are the parameters ``fn`` uses, so that
    their gradients reach :func:`torch.autograd.grad` callers too.
    """

    @staticmethod
    def forward(ctx: Any, fn: Callable[..., Tuple[torch.Tensor, ...]], n_inputs: int, *tensors: torch.Tensor):
        ctx.fn = fn
        ctx.n_inputs = n_inputs
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            return fn(*tensors[:n_inputs])

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor):
        tensors = ctx.saved_tensors
        wanted = [k for k, t in enumerate(tensors) if t.requires_grad]
        grads: List[Any] = [None] * len(tensors)
        if wanted:
            # on the saved tensors themselves (not detached copies): with create_graph,
            # the gradients' own graph then reaches everything upstream (double backward)
            with torch.enable_grad():
                outputs = ctx.fn(*tensors[: ctx.n_inputs])
            found = torch.autograd.grad(
                outputs, [tensors[k] for k in wanted], grad_outputs,
                allow_unused=True, create_graph=torch.is_grad_enabled(),
            )
            for k, g in zip(wanted, found):
                grads[k] = g
        return (None, None, *grads)


def recomputed(
    fn: Callable[..., Tuple[torch.Tensor, ...]], args: Sequence[Any], modules: Sequence[nn.Module]
) -> Tuple[torch.Tensor, ...]:
    """``fn(*args)`` (a tuple of tensors) keeping only ``args`` for the backward, which recomputes it.

    ``modules``: those whose parameters ``fn`` uses. Non-tensor ``args`` are bound into ``fn``.
    """
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    slots = [isinstance(a, torch.Tensor) for a in args]

    def call(*ts: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        it = iter(ts)
        return fn(*[next(it) if is_tensor else a for a, is_tensor in zip(args, slots)])

    params = [p for m in modules for p in m.parameters()]
    return _Recomputed.apply(call, len(tensors), *tensors, *params)


def chunked_pair_sum(
    fn: Callable[..., Tuple[torch.Tensor, ...]],
    bounds: Sequence[Tuple[int, int, int, int]],
    i: torch.Tensor,
    node_args: Sequence[object],
    pair_args: Sequence[torch.Tensor],
    modules: Sequence[nn.Module],
) -> Tuple[torch.Tensor, ...]:
    """Per-center sums of per-pair terms, chunk by chunk, each chunk recomputed in the backward.

    ``fn(*node_args, *pair_chunk, i_local, n_local)`` returns a tuple of
    (n_local, ...) per-center sums for the pairs of one chunk (``pair_chunk``:
    each of ``pair_args`` sliced to the chunk's pairs, ``i_local`` (p,) their
    centers counted from the chunk's first atom). The chunks' results are
    concatenated into (N, ...) tensors. ``bounds`` from :func:`center_chunks`
    on the sorted centers ``i``; ``modules``: those whose parameters ``fn`` uses.
    """
    parts: List[Tuple[torch.Tensor, ...]] = []
    for a0, a1, p0, p1 in bounds:
        chunk = [t[p0:p1] for t in pair_args]
        i_local = i[p0:p1] - a0
        parts.append(recomputed(fn, [*node_args, *chunk, i_local, a1 - a0], modules))
    return tuple(torch.cat([p[k] for p in parts]) for k in range(len(parts[0])))
