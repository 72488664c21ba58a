"""The one check behind every "must be one of" field of the model configs."""

from __future__ import annotations


def require_choice(owner: str, field: str, value: object, allowed: tuple) -> None:
    """``ValueError("FixupResNetConfig.init must be one of ['fixup', 'kaiming'], got 'xavier'")``."""
    if value not in allowed:
        raise ValueError(f"{owner}.{field} must be one of {list(allowed)}, got {value!r}")
