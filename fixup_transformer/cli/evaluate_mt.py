"""``fixup-evaluate-mt``: translate a corpus split with a saved model, print sacreBLEU (with signature) and chrF.

    fixup-evaluate-mt --model runs/multi30k_de_en/best --split test --beam 5 --output hyp.txt
    fixup-evaluate-mt --model DIR --data-dir ../shared/data/multi30k --split test --src de --tgt en
    accelerate launch scripts/evaluate_mt.py --model DIR ...        # batches shared over processes
    accelerate launch -m fixup_transformer.cli.evaluate_mt --model DIR ...   # the same without a checkout

Corpus, data directory and languages, and the decoding options (--beam, --lenpen, --max-len-a/b,
--batch-tokens: its eval section) default to the model's training_config.yaml when it has one, as in
fixup-translate.
``scripts/evaluate_mt.py`` is a thin wrapper around this module.
"""

import argparse
import json

from accelerate import Accelerator

from ..atomic_files import atomic_write_text
from ..errors import run_script
from ..evaluation.bleu import format_scores, scores_to_json
from ..evaluation.mt_eval import EvalRequest, check_model_dir, evaluate_model, training_config_section
from ..evaluation.translate import GenerationSettings
from ..training.process import check_process_count, exit_process
from .translate import check_output, generation_settings

DEFAULTS = GenerationSettings()  # the decoding defaults live there


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF model directory (e.g. <run>/best, <run>/averaged)")
    p.add_argument("--split", default="test", help="train / validation / test (default: test)")
    p.add_argument(
        "--data-dir", help="local corpus directory (default: from training_config.yaml, else the Hub)"
    )
    p.add_argument(
        "--corpus", help="corpus name for file stems (default: training config, else data-dir name)"
    )
    p.add_argument("--split-file", help="file stem of the split inside --data-dir, e.g. valid.tok.lc")
    p.add_argument("--src", help="source language")
    p.add_argument("--tgt", help="target language")
    p.add_argument("--limit", type=int, help="only the first N sentences")
    # Decoding options: this command line, else the model's training_config.yaml (eval section: what the
    # run scored with), else GenerationSettings' defaults; the same rule as fixup-translate.
    p.add_argument(
        "--beam", type=int, help=f"beam size (default: training config, else {DEFAULTS.num_beams})"
    )
    p.add_argument(
        "--lenpen",
        type=float,
        help=f"length penalty (default: training config, else {DEFAULTS.length_penalty})",
    )
    p.add_argument(
        "--max-len-a",
        type=float,
        help=f"max new tokens = a * source length + b (default: training config, else {DEFAULTS.max_len_a})",
    )
    p.add_argument(
        "--max-len-b", type=int, help=f"see --max-len-a (default: training config, else {DEFAULTS.max_len_b})"
    )
    p.add_argument("--max-new-tokens", type=int, help="fixed output length limit (overrides a/b)")
    p.add_argument(
        "--batch-tokens",
        type=int,
        help=f"padded source tokens per batch (default: training config, else {DEFAULTS.batch_tokens})",
    )
    p.add_argument("--output", help="write detokenized hypotheses here, one per line (atomically)")
    p.add_argument("--json", help="write the scores with signatures here as JSON")
    p.add_argument(
        "--tokenized-bleu",
        action="store_true",
        help="also print lowercased 13a-tokenized BLEU (IWSLT-paper style; on by default when the training "
        "config's eval.tokenized_bleu is)",
    )
    p.add_argument(
        "--compound-split-bleu",
        action="store_true",
        help="also print cased, Moses-tokenized, compound-split BLEU (WMT-paper style; on by default when the "
        "training config's eval.compound_split_bleu is)",
    )
    p.add_argument(
        "--pretokenized-refs",
        action="store_true",
        help="references are already Moses-tokenized+lowercased (e.g. iwslt14 valid.tok.lc): tokenized BLEU "
        "Moses-tokenizes the hypotheses the same way and scores both as they are",
    )
    p.add_argument("--cpu", action="store_true", help="force CPU")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Exit codes: 0 scored, 2 usage errors (missing model dir or tokenizer, bad corpus), 1 failures."""
    return run_script(_evaluate, argv)


def _evaluate(argv) -> int:
    args = parse_args(argv)
    check_model_dir(args.model)
    for path in (args.output, args.json):  # before decoding a whole test set, not after
        check_output(path)
    eval_defaults = training_config_section(args.model, "eval")
    settings = generation_settings(args, eval_defaults)
    accelerator = Accelerator(cpu=args.cpu)
    check_process_count(accelerator.num_processes, "--cpu")  # else N full, racing evaluations
    request = EvalRequest(
        model_dir=args.model,
        split=args.split,
        data_dir=args.data_dir,
        corpus=args.corpus,
        src_lang=args.src,
        tgt_lang=args.tgt,
        split_file=args.split_file,
        limit=args.limit,
        tokenized_bleu=args.tokenized_bleu or bool(eval_defaults.get("tokenized_bleu")),
        pretokenized_references=args.pretokenized_refs,
        compound_split_bleu=args.compound_split_bleu or bool(eval_defaults.get("compound_split_bleu")),
    )

    def write_hypotheses(hyps: list[str]) -> None:  # before scoring: a scoring failure loses no decoding
        if args.output and accelerator.is_main_process:
            atomic_write_text(args.output, "".join(h + "\n" for h in hyps))

    hyps, scores, corpus = evaluate_model(request, settings, accelerator, on_translated=write_hypotheses)
    if accelerator.is_main_process:
        if args.json:
            atomic_write_text(args.json, json.dumps(scores_to_json(scores), indent=2) + "\n")
        print(
            f"{corpus.name} {corpus.src_lang}-{corpus.tgt_lang} {args.split} ({corpus.describe(args.split)}): "
            f"{len(hyps)} sentences, "
            f"beam {settings.num_beams}, lenpen {settings.length_penalty}"
        )
        print(format_scores(scores))
    return 0


def run() -> None:
    """Console-script entry point; ends multi-process runs safely (``training/process.py``)."""
    exit_process(main())


if __name__ == "__main__":
    run()
