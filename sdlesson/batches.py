"""Run a model over data in chunks: the one loop every instrument uses (encoding scenes, judging samples, ...).

    probs = batched(classifier, lambda x: classifier(to_float(x)).softmax(-1), images, batch_size=500)
"""

from __future__ import annotations

import torch


@torch.no_grad()
def batched(model: torch.nn.Module, fn, data: torch.Tensor, *, batch_size: int):
    """fn(chunk) for chunks of `data` (N, ...) of batch_size rows: the model in eval mode, no gradients, each chunk
    moved to the model's device and each result back to the CPU, concatenated along the first dimension.

    fn returns a tensor, or a list / tuple of tensors (a model with several heads): then a tuple of them.
    The model is left in eval mode.
    """
    model.eval()
    device = next(model.parameters()).device
    outs = [fn(data[i:i + batch_size].to(device)) for i in range(0, len(data), batch_size)]
    if outs and isinstance(outs[0], (list, tuple)):
        return tuple(torch.cat([o[k].cpu() for o in outs]) for k in range(len(outs[0])))
    return torch.cat([o.cpu() for o in outs])
