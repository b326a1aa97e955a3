"""The training backward pass, restricted to the trainable parameters.

Forces are -dE/dR, so the positions require grad, and a force loss reaches
them again: a plain ``loss.backward()`` also computes d loss / d positions
(the whole position branch of the double backward: radial bases, unit vectors,
pair geometry), which training never uses. Naming the parameters as the
backward's ``inputs`` prunes that branch: 6-10% of a SchNet/PaiNN training step
measured on CHNO batches with torch 2.13 (benchmarks/README.md). Gradients are the same.
"""

from __future__ import annotations

import torch


def backward_to_parameters(loss: torch.Tensor, module: torch.nn.Module, *args, **kwargs) -> None:
    """``loss.backward()`` accumulating into the trainable parameters of ``module`` only."""
    params = [p for p in module.parameters() if p.requires_grad]
    if params:
        loss.backward(*args, inputs=params, **kwargs)
    else:
        loss.backward(*args, **kwargs)
