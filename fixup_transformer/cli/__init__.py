"""Command-line entry points (installed as console scripts, see ``[project.scripts]`` in pyproject.toml).

- ``fixup-train-mt`` (:mod:`.train_mt`), ``fixup-evaluate-mt`` (:mod:`.evaluate_mt`),
  ``fixup-translate`` (:mod:`.translate`, also ``python -m fixup_transformer.translate``),
  ``fixup-train-image`` (:mod:`.train_image`).

The files in ``scripts/`` are thin wrappers around these modules, so ``accelerate launch scripts/train_mt.py``
keeps working; ``accelerate launch -m fixup_transformer.cli.train_mt`` is the same without a checkout.
"""
