"""The specialist's app (Textual). Screens ask :class:`carecli.services.desk.Desk` for data in
thread workers and never build SQL; see :mod:`carecli.screens.base` for the conventions."""

import os

#: The most frames a second Textual paints a screen at (its ``TEXTUAL_FPS``, read once, when Textual is
#: imported: this package is imported before it on every way into the app; a value the user set wins).
#: Textual paints on a fixed grid of 1/FPS seconds, and only when something changed. At its default of 60,
#: a result that arrives within 16 ms of the frame before it waits for the next point of the grid: the next
#: page after PageDown (the key's own frame was just painted), the results of a keystroke (its echo was),
#: 12-14 ms at p50 in tui_bench's paging. At 120 that wait is at most 8 ms.
FRAMES_PER_SECOND = 120

os.environ.setdefault("TEXTUAL_FPS", str(FRAMES_PER_SECOND))
