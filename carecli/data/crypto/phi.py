"""Plaintext PHI lives only inside these wrappers, whose repr and str are masked.

A ``Ssn`` or ``DateOfBirth`` can be passed around, logged by accident or end
up in a traceback's locals without leaking: printing one shows a mask. The
value is taken out explicitly with ``.reveal()`` at the one place that must
show or encrypt it.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Final, Generic, NoReturn, TypeVar

MASK: Final = "[PHI]"
#: ASCII digits only (\d takes any script's digits; the blind index hashes the digits as ASCII) and \Z, not $
_SSN_DIGITS = re.compile(r"[0-9]{9}\Z")
_T = TypeVar("_T")


class _Phi(Generic[_T]):
    __slots__ = ("_value",)
    _value: _T

    def __repr__(self) -> str:
        return f"{type(self).__name__}({MASK})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Phi) and type(other) is type(self) and other._value == self._value

    def __hash__(self) -> int:
        return hash((type(self), self._value))

    def __reduce__(self) -> NoReturn:
        # Pickling would write plaintext somewhere we do not control.
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class Ssn(_Phi[str]):
    """A US Social Security number, nine digits, held masked."""

    __slots__ = ()

    def __init__(self, digits: str) -> None:
        cleaned = digits.replace("-", "").replace(" ", "")
        if not _SSN_DIGITS.match(cleaned):
            raise ValueError("SSN must be nine digits")
        self._value = cleaned

    def reveal(self) -> str:
        """The nine digits, for encryption or an audited reveal."""
        return self._value

    def formatted(self) -> str:
        """``123-45-6789``: only for an audited reveal."""
        return f"{self._value[:3]}-{self._value[3:5]}-{self._value[5:]}"

    def masked(self) -> str:
        """``***-**-6789``: needs decryption, so only after an audited reveal."""
        return f"***-**-{self._value[5:]}"


class DateOfBirth(_Phi[date]):
    """A member's date of birth, held masked."""

    __slots__ = ()

    def __init__(self, value: date) -> None:
        if not isinstance(value, date):
            raise ValueError("date of birth must be a date")
        self._value = value

    def reveal(self) -> date:
        return self._value

    def isoformat(self) -> str:
        return self._value.isoformat()
