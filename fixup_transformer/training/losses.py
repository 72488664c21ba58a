"""fairseq's label-smoothed cross-entropy, returned as *sums* so the loop can normalize it itself.

The loop normalizes by the number of target tokens of the whole update (all accumulated micro-batches on
all processes), as fairseq does; a per-batch mean (what ``model(..., labels=...).loss`` returns) would
weight short batches more. So the loss is computed here from the logits, and the model is called with
``decoder_input_ids`` instead of ``labels`` (which would make it compute a second, unused loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..text.modeling_fixup_transformer import IGNORE_INDEX


def label_smoothed_nll_loss(
    logits: torch.Tensor, labels: torch.Tensor, epsilon: float, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed label-smoothed loss, summed NLL and the number of target tokens.

    fairseq ``label_smoothed_cross_entropy``: with ``eps_i = epsilon / (V - 1)``,
    ``loss = (1 - epsilon - eps_i) * nll + eps_i * sum_v(-log p_v)``, i.e. the smoothing mass is spread
    over the V - 1 wrong classes (torch's ``label_smoothing`` spreads it over all V; the difference is
    O(epsilon / V)). Computed in float32 whatever the autocast dtype.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)
    mask = labels != ignore_index
    target = labels.masked_fill(~mask, 0).unsqueeze(-1)
    nll = -lprobs.gather(dim=-1, index=target).squeeze(-1)
    smooth = -lprobs.sum(dim=-1)
    nll = nll.masked_fill(~mask, 0.0).sum()
    smooth = smooth.masked_fill(~mask, 0.0).sum()
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return loss, nll, mask.sum()
