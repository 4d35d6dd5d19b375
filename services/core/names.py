"""Client-named models and versions checked against the repository's naming rules.

The rules (what a folder name may be, the containment check) are the model contract's
(contract/model.py), shared with the repository scan, so a name that cannot be loaded can
never be asked for either; here they become INVALID_ARGUMENT for clients.
"""

from __future__ import annotations

from contract.model import (
    MAX_NAME_CHARS,
    MAX_VERSION_DIGITS,
    inside,
    is_model_name,
    version_number,
)
from services.errors import InvalidInput, shown

__all__ = ["check_model_name", "check_version", "inside", "is_model_name", "version_number"]


def check_model_name(name: str) -> str:
    """The name, or INVALID_ARGUMENT saying what a model name may be."""
    if not is_model_name(name):
        raise InvalidInput(
            f"invalid model name {shown(name)}: letters, digits, '_', '.', '-', starting "
            f"with a letter or digit, at most {MAX_NAME_CHARS} characters"
        )
    return name


def check_version(text: str) -> int:
    """The version number, or INVALID_ARGUMENT saying what a version may be."""
    number = version_number(text)
    if number is None:
        raise InvalidInput(
            f"invalid model version {shown(text)}: a positive number in ASCII digits "
            f"without leading zeros, at most {MAX_VERSION_DIGITS} digits"
        )
    return number
