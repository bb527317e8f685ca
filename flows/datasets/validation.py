"""The error every data rule raises: it names the file, the field and the rule."""

from __future__ import annotations

from pathlib import Path


class DataValidationError(ValueError):
    """Input data broke a rule. Raised before anything is written."""

    def __init__(self, file: Path | str, field: str, rule: str, detail: str = "") -> None:
        self.file, self.field, self.rule, self.detail = str(file), field, rule, detail
        message = f"{self.file}: field '{field}' breaks rule '{rule}'"
        super().__init__(f"{message}: {detail}" if detail else message)


def require(ok: bool, file: Path | str, field: str, rule: str, detail: str = "") -> None:
    if not ok:
        raise DataValidationError(file, field, rule, detail)
