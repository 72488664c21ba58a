"""Validation during MT training: the teacher-forced loss over the validation set, and greedy (or beam)
BLEU on its first ``eval.bleu_sentences`` sentences."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator

from ..data import SortedBatchSampler, TranslationCollator
from ..evaluation.bleu import sacrebleu_score
from ..evaluation.translate import GenerationSettings, translate_corpus
from ..hardware import sum_dtype
from .mt_config import MTConfig
from .mt_data import MTData
from .mt_step import forward_loss_sums, to_device


@torch.no_grad()
def validation_loss(
    model, accelerator: Accelerator, dataset, cfg: MTConfig, ids: tuple[int, int], loss_sums=None
) -> dict:
    """Teacher-forced loss/nll per target token over the whole validation set (sharded over processes).

    ``loss_sums(model, batch, pad_id, start_id) -> (loss sum, nll sum, tokens)`` defaults to this model's
    own loss (:func:`forward_loss_sums`); a benchmark passes its peer model's."""
    loss_sums = loss_sums or forward_loss_sums
    model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    collate = TranslationCollator()
    sampler = SortedBatchSampler(
        dataset.num_tokens,
        cfg.data.max_tokens,
        max_sentences=cfg.data.max_sentences,  # the training batches' bound on sentences holds here too
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
    )
    sums = torch.zeros(3, device=accelerator.device, dtype=sum_dtype(accelerator.device))
    try:
        for batch_ids in sampler:
            batch = to_device(collate([dataset[i] for i in batch_ids]), accelerator.device)
            with accelerator.autocast():
                loss, nll, ntok = loss_sums(model, batch, *ids)
            sums += torch.stack([loss.double(), nll.double(), ntok.double()])
    finally:
        model.train(was_training)
    loss, nll, ntok = accelerator.reduce(sums, "sum").tolist()
    return {
        "valid_loss": loss / max(ntok, 1),
        "valid_nll_loss": nll / max(ntok, 1),
        "valid_ppl": math.exp(nll / max(ntok, 1)),
    }


def validate(model, accelerator: Accelerator, data: MTData, cfg: MTConfig, ids: tuple[int, int]) -> dict:
    result = validation_loss(model, accelerator, data.valid, cfg, ids)
    n = min(cfg.eval.bleu_sentences, len(data.valid_pairs))
    if n > 0:
        pairs = data.valid_pairs[:n]
        hyps = translate_corpus(
            model,
            data.tokenizer,
            [s for s, _ in pairs],
            generation_settings(cfg, beam=cfg.eval.valid_beam),
            accelerator=accelerator,
            desc="valid BLEU",
        )
        bleu = sacrebleu_score(hyps, [t for _, t in pairs])
        result["valid_bleu"], result["valid_bleu_signature"] = bleu.score, bleu.signature
        result["valid_bleu_sentences"] = n
    return result


def generation_settings(cfg: MTConfig, beam: int) -> GenerationSettings:
    e = cfg.eval
    return GenerationSettings(
        num_beams=beam,
        length_penalty=e.lenpen,
        max_len_a=e.max_len_a,
        max_len_b=e.max_len_b,
        batch_tokens=e.batch_tokens,
    )


def best_metric_key(cfg: MTConfig, result: dict) -> str:
    """The result key the best model is chosen on: ``valid_bleu`` where BLEU is asked for and scored."""
    return "valid_bleu" if cfg.eval.best_metric == "bleu" and "valid_bleu" in result else "valid_loss"


def best_metric_value(cfg: MTConfig, result: dict) -> tuple[float, bool]:
    """(value, higher_is_better) of the best-model metric."""
    key = best_metric_key(cfg, result)
    return result[key], key == "valid_bleu"
