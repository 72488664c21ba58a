"""Pieces of the Accelerate training loops shared by the MT and image scripts.

``config`` (YAML + overrides into dataclasses), ``optim`` (Fixup parameter groups), ``schedules``
(LR multipliers), ``checkpoint`` (atomic saves, exact resume, averaging, HF export), ``metrics``
(JSON lines + trackers). The MT loop itself is ``fixup_transformer.training.mt``.
"""
