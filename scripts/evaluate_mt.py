#!/usr/bin/env python
"""Translate a corpus split with a saved model and print sacreBLEU (with signature) and chrF.

    python scripts/evaluate_mt.py --model runs/multi30k_de_en/best --split test --beam 5 --output hyp.txt
    python scripts/evaluate_mt.py --model DIR --data-dir ../shared/data/multi30k --split test --src de --tgt en
    accelerate launch scripts/evaluate_mt.py --model DIR ...        # batches shared over processes

Corpus, data directory and languages, and the decoding options (--beam, --lenpen, --max-len-a/b,
--batch-tokens: its eval section) default to the model's training_config.yaml when it has one, as in
fixup-translate.

The logic lives in ``fixup_transformer.cli.evaluate_mt`` (installed as the ``fixup-evaluate-mt`` command).
"""

from fixup_transformer.cli.evaluate_mt import main, parse_args, run  # noqa: F401  (main: imported by the tests)

if __name__ == "__main__":
    run()
