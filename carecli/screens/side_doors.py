"""Textual's developer features that would copy what the screen shows (member PHI included) elsewhere.

Textual is a general toolkit: it can write every screen to an SVG file, log
every event (each key pressed, so every value typed) to a file or a devtools
console, and print a crash's traceback with the local variables of every frame.
In a clinical tool each of those is a way around the audit trail, so the app
shuts them (:func:`close_side_doors`, called by :class:`~carecli.screens.app.CareApp`):

* ``TEXTUAL_LOG=FILE``: every log call and event, key presses with their characters, appended to FILE;
* ``TEXTUAL_SCREENSHOT=SECONDS`` (``_LOCATION``, ``_FILENAME``): an SVG of the screen written to disk;
* ``TEXTUAL=devtools`` (with ``textual-dev`` installed): the same log streamed to a console over a socket
  (``TEXTUAL_DEVTOOLS_HOST`` may be another machine).

The screenshot action and command, and the crash traceback's locals, are
handled by ``CareApp`` itself. carecli's own log (:mod:`carecli.logs`) never
holds PHI and is unaffected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import constants

if TYPE_CHECKING:
    from textual.app import App

#: why a screenshot is refused (shown to the user)
SCREENSHOT_REFUSED = ("Screenshots are turned off: a picture of the screen could hold member data "
                      "outside the audit trail.")


def close_side_doors(app: App[Any]) -> None:
    """Turn off Textual's event log file, timed screenshot and devtools connection for this process and ``app``."""
    # Read by Textual from the environment once, at import, and looked up on its constants module when used
    # (setattr: they are Final to type checkers).
    for name, off in (("LOG_FILE", None), ("SCREENSHOT_DELAY", -1), ("SCREENSHOT_LOCATION", None),
                      ("SCREENSHOT_FILENAME", None)):
        setattr(constants, name, off)
    # Made in App.__init__ when TEXTUAL names "devtools" and textual-dev is installed; connected only later, at run.
    app.devtools = None
    app._devtools_redirector = None  # private in Textual: it would forward print() output to the console
    app.features = frozenset(feature for feature in app.features if feature != "devtools")
