"""Translate a whole corpus fast: token-budget batches of similar length, original order restored.

Sentences are encoded once, sorted by length (longest first, so an out-of-memory error shows up at
once rather than at the end) and cut into batches of at most ``batch_tokens`` padded source tokens by
:class:`fixup_transformer.data.SortedBatchSampler`. Under Accelerate every process translates its own
round-robin share of the batches, the (index, hypothesis) pairs of all processes are gathered, and
:func:`fixup_transformer.data.restore_order` puts them back in corpus order on every process (it fails
loudly on a missing or duplicated sentence rather than scoring a misaligned output).

Output length follows fairseq: at most ``max_len_a * source_length + max_len_b`` new tokens per batch
(source length of the longest sentence in the batch), unless ``max_new_tokens`` fixes it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data import SortedBatchSampler, TranslationCollator, restore_order
from ..hardware import skip_per_shape_attention_builds


@dataclass
class GenerationSettings:
    """Decoding options shared by validation, the final test, ``evaluate_mt`` and ``translate``.

    These are the one place the defaults live: the training config's ``eval`` section and both commands
    take theirs from here.
    """

    num_beams: int = 5
    length_penalty: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10
    max_new_tokens: int | None = None
    batch_tokens: int = 8000

    def new_tokens(self, max_source_length: int, positions: int | None = None) -> int:
        """``a * length + b`` (or the fixed limit), capped as fairseq caps it: the decoder inputs (start
        token + all but the last new token) must fit the model's ``positions``."""
        if self.max_new_tokens is not None:
            limit = self.max_new_tokens
        else:
            limit = max(1, math.ceil(self.max_len_a * max_source_length + self.max_len_b))
        return limit if positions is None else max(1, min(limit, positions - 1))


def position_limit(model) -> int | None:
    """How many positions the model's sequences may use (None: no such limit known)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return None if limit is None else limit - getattr(config, "position_offset", 0)


def crop_to_positions(encoded: list[list[int]], positions: int) -> list[list[int]]:
    """Sources longer than the model's positions, cut to fit (keeping the final ``</s>``) with a warning,
    as ``marian-decoder --max-length-crop`` does: one translation per line rather than a crash mid-corpus."""
    too_long = [len(ids) for ids in encoded if len(ids) > positions]
    if not too_long:
        return encoded
    warnings.warn(
        f"{len(too_long)} source sentence(s) longer than the model's {positions} positions (up to "
        f"{max(too_long)} tokens) were cut to {positions} tokens",
        stacklevel=3,
    )
    return [ids if len(ids) <= positions else ids[: positions - 1] + ids[-1:] for ids in encoded]


@torch.no_grad()
def translate_corpus(
    model,
    tokenizer,
    sources: Sequence[str],
    settings: GenerationSettings | None = None,
    accelerator=None,
    show_progress: bool = True,
    desc: str = "translating",
) -> list[str]:
    """Detokenized translations of ``sources``, in their order, on every process; blank sources give "".

    ``model`` may be wrapped (DDP); generation runs on the unwrapped module in eval mode (training mode is
    restored afterwards) and under the accelerator's autocast.
    """
    settings = settings or GenerationSettings()
    blank = [not source.strip() for source in sources]
    if any(blank):  # an empty source has an empty translation (as `fixup-translate` gives), not the model's
        kept = [source for source, is_blank in zip(sources, blank, strict=True) if not is_blank]
        translations = iter(
            translate_corpus(model, tokenizer, kept, settings, accelerator, show_progress, desc)
        )
        return ["" if is_blank else next(translations) for is_blank in blank]
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
        world, rank, is_main = (
            accelerator.num_processes,
            accelerator.process_index,
            accelerator.is_main_process,
        )
    else:
        world, rank, is_main = 1, 0, True
    if len(sources) == 0:
        return []
    device = next(model.parameters()).device
    if device.type == "cuda":
        skip_per_shape_attention_builds()  # every batch and decoding step has a new attention shape
    encoded = tokenizer(list(sources), return_attention_mask=False)["input_ids"]
    positions = position_limit(model)
    if positions is not None:
        encoded = crop_to_positions(encoded, positions)
    lengths = [len(ids) for ids in encoded]
    sampler = SortedBatchSampler(lengths, settings.batch_tokens, num_replicas=world, rank=rank)
    collate = TranslationCollator(pad_id=tokenizer.pad_token_id)
    # Only what this decoding uses: transformers warns at every batch about flags that do not apply (a
    # length penalty in greedy search) and about the exports' max_length cap beside max_new_tokens.
    decoding_flags: dict = {"num_beams": settings.num_beams, "max_length": None}
    if settings.num_beams > 1:
        decoding_flags.update(length_penalty=settings.length_penalty, early_stopping=True)
    was_training = model.training
    model.eval()
    ids: list[int] = []
    hypotheses: list[str] = []
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    try:
        for batch_ids in tqdm(
            sampler, desc=desc, unit="batch", disable=not (show_progress and is_main), leave=False
        ):
            batch = collate([{"input_ids": encoded[i]} for i in batch_ids])
            with autocast():
                output = model.generate(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=settings.new_tokens(max(lengths[i] for i in batch_ids), positions),
                    do_sample=False,
                    **decoding_flags,
                )
            ids.extend(batch_ids)
            hypotheses.extend(tokenizer.batch_decode(output, skip_special_tokens=True))
    finally:
        model.train(was_training)
    pairs = list(zip(ids, hypotheses, strict=True))
    if world > 1:
        from accelerate.utils import gather_object

        pairs = gather_object(pairs)
    return restore_order([i for i, _ in pairs], [h.strip() for _, h in pairs])
