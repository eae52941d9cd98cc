"""The garbage collector's full passes, kept short while someone works and long only while they pause.

CPython 3.11's full (generation 2) pass walks every tracked object that is not frozen. Once signed in, an app
holds some 190,000 of them besides what start-up made (Textual's Strips alone, with their seven caches each,
are half of it; measured after a tour of 60 pages, 100 searches and 20 members opened): a pass took 60-70 ms,
and one lands in a key press now and then. The policy here is a generational scheme on top of CPython's:

- after sign-in, everything start-up made is frozen (``gc.freeze``): it lives as long as the app;
- after every full pass, automatic or ours, what survived it is frozen too, so the next pass walks only what
  was made since the last one (a few thousand objects: a few milliseconds);
- a screen, once painted for the first time, is frozen without a pass (``settle``): what it made lives as long
  as it does, and the first full pass after it would walk all of it (the worklist and the member browser after
  a sign-in: 48,000 objects, 35-40 ms);
- frozen objects that later become cyclic garbage (a closed screen's widget tree, mostly) wait for a *deep*
  pass, which unfreezes everything, collects and freezes again: it runs only once the keyboard has been still
  (see ``CareApp.collect_when_idle``) and only when the frozen heap has grown by ``DEEP_GROWTH`` objects since
  the last deep pass, so memory stays bounded and the long walk happens when nobody waits on it.

The collector is the process's (like ``gc`` itself): one app per process in real use, one after the other in
tests; ``start`` and ``stop`` bracket an app's signed-in life.
"""

from __future__ import annotations

import gc
from typing import Any

#: objects frozen since the last deep pass (surviving full passes, a closed screen's widgets among them) before
#: the next idle pause runs a deep one; a member screen leaves about 20,000 when closed
DEEP_GROWTH = 100_000
#: growth at which a deep pass runs even with no pause in the typing (a bound on memory for someone who never
#: stops for half a second; a tour of 60 pages, 100 searches and 20 members opened without a pause grows ~300,000)
FORCED_GROWTH = 5 * DEEP_GROWTH


#: whether start-up turned the collector off (:func:`hold_start_up`) and has not turned it on again
_start_up_held = False


def hold_start_up() -> None:
    """No collections while the app starts: the ~140,000 objects start-up makes (Textual, SQLAlchemy, the
    screens) live as long as the app, and the passes that walk them as they are made find nothing to free
    (a full one among them). :func:`release_start_up` turns the collector on again once the first screen is
    shown; :meth:`Collector.start` then freezes what start-up made. Nothing when it is off already."""
    global _start_up_held
    if gc.isenabled():
        gc.disable()
        _start_up_held = True


def release_start_up() -> None:
    """The collector on again after :func:`hold_start_up` (idempotent; nothing if start-up did not hold it)."""
    global _start_up_held
    if _start_up_held:
        _start_up_held = False
        gc.enable()


class Collector:
    """Freezes what survives each full pass; frees frozen garbage at idle deep passes.

    Counting the frozen objects (``gc.get_freeze_count``) walks all of them: ~20 ms for 450,000 on a busy
    machine, too much for a check every half second. The collector keeps an upper bound instead (what each
    pass froze, from the pass's own survivors) and counts exactly only when the bound passes a limit."""

    def __init__(self) -> None:
        self.running = False
        #: true while one of our own passes runs (its survivors are frozen by the caller, not the callback)
        self.collecting = False
        #: the frozen count after the last deep pass (or the start; None: not counted yet, see growth)
        self.deep_base: int | None = 0
        #: at least the growth since the last deep pass: exact at the last count, plus what was frozen since
        #: (some of which reference counts may have freed meanwhile)
        self.estimate = 0
        #: counts, for tests and benchmarks: automatic full passes seen, idle passes, deep passes
        self.automatic = 0
        self.idle = 0
        self.deep = 0

    def start(self) -> None:
        """Freeze what exists (start-up's objects) and freeze each full pass's survivors from now on."""
        gc.freeze()
        # Not counted now (that walks every frozen object: ~20 ms for the app's start-up's, on the way to the
        # worklist); counted with the first exact growth, the bound standing in for what was frozen meanwhile.
        self.deep_base, self.estimate = None, 0
        if not self.running:
            gc.callbacks.append(self._after_pass)
            self.running = True

    def settle(self) -> None:
        """Freeze, without a pass, what was made since the last freeze: called once a screen is painted for
        the first time (CareScreen), and once the worklist is painted with its first rows. A screen's widgets
        live as long as it does (the worklist and the member browser as long as the session), and the first
        full pass after them would otherwise walk all of them: in `benchmarks/tui_bench.py`'s tour, the first
        pass walked 48,000 objects, 35-40 ms on a slow machine, in the middle of the paging. What little
        garbage is among them waits for a deep pass, counted in the growth like every pass's survivors
        (listing the generations costs about a millisecond; the freeze itself moves lists, not objects)."""
        if not self.running:
            return
        self.estimate += sum(len(gc.get_objects(generation=generation)) for generation in range(3))
        gc.freeze()

    def stop(self) -> None:
        """The app ends: no more freezing, and what was frozen is the collector's again (garbage of the app's
        life, frozen while alive, is freed by the process's next full pass: a test process runs many apps)."""
        if self.running:
            gc.callbacks.remove(self._after_pass)
            self.running = False
            gc.unfreeze()

    def _after_pass(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info["generation"] != 2 or self.collecting:
            return
        self.automatic += 1
        self._freeze_survivors()

    def _freeze_survivors(self) -> None:
        # After a full pass the young generations are empty: its survivors are the oldest generation, as many
        # as the pass itself walked.
        self.estimate += len(gc.get_objects(generation=2))
        gc.freeze()

    def growth(self) -> int:
        """Objects frozen since the last deep pass and not freed since by their reference counts (walks every
        frozen object; exact, except that the first count after the start takes the bound for what was frozen
        since the start, so the first deep pass may come a little early, never late)."""
        frozen = gc.get_freeze_count()
        if self.deep_base is None:  # the first count since the start: the bound stands for the growth so far
            self.deep_base = frozen - self.estimate
        self.estimate = frozen - self.deep_base
        return self.estimate

    def _grown_past(self, limit: int) -> bool:
        return self.estimate > limit and self.growth() > limit

    def overdue(self) -> bool:
        """Frozen garbage may have piled up past what waits for a pause (see FORCED_GROWTH)."""
        return self.running and self._grown_past(FORCED_GROWTH)

    def pause_pass(self) -> bool:
        """The pass for a pause in the typing: a deep one when the frozen heap has grown enough, else a full
        pass over what is not frozen; its survivors are frozen. True when it was a deep pass."""
        deep = self._grown_past(DEEP_GROWTH)
        self.collecting = True
        try:
            if deep:
                gc.unfreeze()
                gc.collect()
                self.deep_base, self.estimate = len(gc.get_objects(generation=2)), 0
                gc.freeze()
            else:
                gc.collect()
                self._freeze_survivors()
        finally:
            self.collecting = False
        if deep:
            self.deep += 1
        else:
            self.idle += 1
        return deep


collector = Collector()
