"""Which class imports which kind."""

from __future__ import annotations

from carecli.data.bulk.catalog import kind_named
from carecli.data.bulk.kinds import Kind
from carecli.data.bulk.members import MembersKind
from carecli.data.bulk.plans import PlansKind

_KINDS: dict[str, type[Kind]] = {
    "members": MembersKind,
    "plans": PlansKind,
}


def kind_for(name: str) -> Kind:
    """The importer for a kind name or alias (a usage error for unknown ones)."""
    canonical = kind_named(name)
    return _KINDS[canonical]()
