"""The output projection and the label-smoothed cross entropy in one pass, without keeping the logits.

A translation model's largest activation is its logits: ``[target tokens, vocabulary]`` (8k tokens x 32k
pieces is 1 GiB in fp32), and the usual ``log_softmax`` + ``nll`` keeps an fp32 copy of it (two under
autocast) alive through the whole backward pass. Since the loss is a sum over tokens, its gradient with
respect to the logits is known as soon as they are: ``softmax(z) - q`` for the smoothed target
distribution ``q``. So the forward computes, chunk by chunk of tokens, the logits, the loss sums and
already the gradients of the decoder output and of the output weight, and keeps only those two
(``[tokens, d]`` and ``[V, d]``); backward scales them by the incoming gradient. The matmuls are the same
three as in autograd's version (logits, grad input, grad weight); only the ``[chunk, V]`` buffer is ever
alive. (The approach of Liger-Kernel's fused linear cross entropy; Liger is Triton/CUDA only, and this
runs wherever torch does.)

Label smoothing spreads ``uniform`` probability mass on every class and ``1 - uniform * V`` on the
target: torch's ``label_smoothing=eps`` is ``uniform = eps / V``, fairseq's is ``eps / (V - 1)``.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # label positions without a loss (torch's and transformers' convention)

# Logits per chunk. On a GPU each chunk costs a dozen kernel launches, so chunks are large: 2**26 elements
# (256 MiB in fp32, 2,048 tokens at a 32k vocabulary). On a CPU there is no launch cost, and 2**22 (16 MiB)
# measured no slower than one large chunk while the logits stop being the peak of a training step.
CHUNK_ELEMENTS = 2**26
CPU_CHUNK_ELEMENTS = 2**22


class _LinearSmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, uniform: float, chunk_tokens: int):
        # hidden [N, d], weight [V, d], labels [N]. Matmuls follow the autocast state of the caller.
        vocab = weight.size(0)
        target_mass = 1.0 - uniform * vocab
        needs_grad_weight = ctx.needs_input_grad[1]  # False for a frozen output layer (adapters elsewhere)
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if needs_grad_weight
            else None
        )
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        nll_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk_tokens):
            h = hidden[start : start + chunk_tokens]
            y = labels[start : start + chunk_tokens]
            mask = y != IGNORE_INDEX
            target = y.masked_fill(~mask, 0).unsqueeze(1)
            projected = torch.nn.functional.linear(h, weight)  # the autocast dtype, if autocast is on
            compute_dtype = projected.dtype
            logits = projected.float()
            del projected
            lse = torch.logsumexp(logits, dim=1)
            nll = lse - logits.gather(1, target).squeeze(1)
            smooth = vocab * lse - logits.sum(dim=1)  # sum over classes of -log p
            row_loss = target_mass * nll + uniform * smooth
            loss_sum += row_loss.masked_fill(~mask, 0.0).sum()
            nll_sum += nll.masked_fill(~mask, 0.0).sum()
            # d(row loss)/d(logits) = softmax - q, with q = uniform everywhere + target_mass on the target;
            # rows without a label get none. Built in place in the logits buffer.
            grad = logits.sub_(lse.unsqueeze(1)).exp_().sub_(uniform)
            grad.scatter_add_(1, target, torch.full_like(target, -target_mass, dtype=grad.dtype))
            grad.mul_(mask.unsqueeze(1))
            grad = grad.to(compute_dtype)
            grad_hidden[start : start + chunk_tokens] = grad @ weight.to(compute_dtype)
            if needs_grad_weight and compute_dtype == torch.float32:
                # In place, with no [V, d] temporary beside the accumulator; the out= form (not addmm_),
                # which torch's FlopCounterMode counts.
                torch.addmm(grad_weight, grad.t(), h, out=grad_weight)
            elif needs_grad_weight:
                grad_weight += (grad.t() @ h.to(compute_dtype)).float()
            del grad, logits
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if needs_grad_weight else None)
        ctx.mark_non_differentiable(nll_sum)
        return loss_sum, nll_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        # Scaled in place: a second copy of the [V, d] gradient would be allocated while every activation
        # is still alive. A second backward through the same graph then fails on the modified tensors
        # (autograd's version check) instead of scaling them twice.
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight.mul_(grad_loss.to(grad_weight.dtype))
        return grad_hidden, grad_weight, None, None, None


def label_smoothed_loss_sums(
    logits: torch.Tensor, labels: torch.Tensor, uniform: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same two sums from logits that exist anyway (evaluation, ``torch.compile``, or
    ``loss_without_logits=False``); the NLL sum carries no gradient.

    The target term goes through ``nll_loss``, not ``gather``: under ``torch.compile`` the backward of a
    gather is a scatter into a zeroed fp32 ``[tokens, V]`` buffer (4 GiB at 32k tokens x 32k pieces, written
    and read once more per step), while inductor fuses ``nll_loss``'s backward into the softmax gradient."""
    lprobs = torch.nn.functional.log_softmax(logits.float(), dim=-1).flatten(0, -2)
    labels = labels.to(logits.device).flatten()
    nll = torch.nn.functional.nll_loss(lprobs, labels, ignore_index=IGNORE_INDEX, reduction="none")
    smooth = -lprobs.sum(dim=-1).masked_fill(labels == IGNORE_INDEX, 0.0)
    target_mass = 1.0 - uniform * lprobs.size(-1)
    loss = target_mass * nll + uniform * smooth
    return loss.sum(), nll.detach().sum()


@torch.compiler.disable  # a Python loop over chunks; the compiled graph stops at the decoder output
def linear_label_smoothed_loss_sums(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    uniform: float,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed loss and summed NLL of ``linear(hidden, weight)`` against ``labels``.

    ``hidden`` is ``[..., d]`` and ``labels`` the matching ``[...]`` (``-100``: no loss). Only the loss
    sum carries a gradient (to ``hidden`` and ``weight``); both sums are fp32.
    """
    flat_hidden = hidden.reshape(-1, hidden.size(-1))
    flat_labels = labels.reshape(-1).to(hidden.device)
    on_cpu = hidden.device.type == "cpu"
    if on_cpu:
        # Padding has no loss: on CPU its rows are dropped before the output projection, the largest
        # matmul of a small model (a V x d product per token). On a GPU finding them would be a host sync.
        labelled = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
        if labelled.numel() < flat_labels.numel():
            flat_hidden, flat_labels = flat_hidden.index_select(0, labelled), flat_labels[labelled]
    elements = CPU_CHUNK_ELEMENTS if on_cpu else CHUNK_ELEMENTS
    chunk = chunk_tokens or max(1, elements // weight.size(0))
    return _LinearSmoothedCrossEntropy.apply(flat_hidden, weight, flat_labels, float(uniform), chunk)


__all__ = ["label_smoothed_loss_sums", "linear_label_smoothed_loss_sums"]
