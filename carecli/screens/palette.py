"""ctrl+p: jump to a member by name from anywhere (the command palette's member provider)."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, cast

from textual.command import Hit, Hits, Provider

from carecli.screens.base import member_name

if TYPE_CHECKING:
    from carecli.screens.app import CareApp

MIN_QUERY = 2


class MemberCommands(Provider):
    """Members whose name starts with what was typed; choosing one opens their record."""

    async def search(self, query: str) -> Hits:
        app = cast("CareApp", self.app)
        text = query.strip()
        if app.desk is None or app.locked or len(text) < MIN_QUERY:
            return
        try:
            # The database call runs in a thread: the palette stays responsive while it runs.
            members = await asyncio.to_thread(app.desk.member_names, text, limit=8)
        except Exception:  # the palette is a convenience: a failed lookup just shows no members
            return
        matcher = self.matcher(text)
        for member in members:
            name = member_name(member.first_name, member.last_name)
            label = f"{name} · {member.city or ''} {member.state or ''}".rstrip(" ·")
            yield Hit(max(matcher.match(f"{member.first_name} {member.last_name}"), matcher.match(name), 0.5),
                      matcher.highlight(label), partial(app.open_member, member.id),
                      help="Open this member's record")
