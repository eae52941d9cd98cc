"""Which class imports which kind."""

from __future__ import annotations

from carecli.data.bulk.calls import CallsKind
from carecli.data.bulk.catalog import kind_named
from carecli.data.bulk.enrollments import EnrollmentsKind
from carecli.data.bulk.flags import FlagsKind
from carecli.data.bulk.kinds import Kind
from carecli.data.bulk.members import MembersKind
from carecli.data.bulk.plans import PlansKind
from carecli.data.bulk.specialists import SpecialistsKind

_KINDS: dict[str, type[Kind]] = {
    "members": MembersKind,
    "plans": PlansKind,
    "enrollments": EnrollmentsKind,
    "specialists": SpecialistsKind,
    "calls": CallsKind,
    "flags": FlagsKind,
}


def kind_for(name: str) -> Kind:
    """The importer for a kind name or alias (a usage error for unknown ones)."""
    canonical = kind_named(name)
    return _KINDS[canonical]()
