"""A character-only terminal screen for the SSH benchmark's clients: where each character is, nothing else.

pyte parses every byte through a Python state machine and keeps each cell's colours and attributes; fifty
clients of a Textual app spend most of a core doing that (``ssh_bench.py --emulator pyte`` still does).
This screen keeps only what the benchmark looks at (the characters of each row) and splits the stream with
one regular expression: plain text runs, cursor positioning (CUP, CHA, VPA, the relative moves), erasing
(EL, ED, ECH), carriage return, line feed, backspace and tab. Colours and the modes
it does not draw (SGR, mouse, paste, sync output, the kitty keyboard protocol, OSC, DCS) are skipped.
Wide characters (East Asian wide and fullwidth) take two cells, as in pyte (the second cell is "").

``ssh_bench.py --check-emulator`` feeds pyte alongside and fails on the first chunk after which the two
screens' characters differ.
"""

from __future__ import annotations

import re
import unicodedata

_SEQUENCE = re.compile(
    r"\x1b\[([?>=<]?)([0-9;:]*)[ -/]*([@-~])"  # CSI: private marker, parameters, intermediates, final
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC ... BEL or ST
    r"|\x1b[P^_X][^\x1b]*\x1b\\"  # DCS, PM, APC, SOS ... ST
    r"|\x1b[ -/][0-~]"  # ESC with an intermediate (charset designation)
    r"|\x1b[0-~]"  # ESC and one final
    r"|([\r\n\b\t\x0b\x0c])"  # controls that move the cursor
    r"|[\x00-\x06\x0e-\x1a\x1c-\x1f\x7f]"  # other controls: nothing drawn
    r"|([^\x00-\x1f\x7f]+)"  # text
)
#: an escape sequence cut at the end of a chunk (kept for the next one)
_INCOMPLETE = re.compile(r"\x1b(?:\[[?>=<]?[0-9;:]*[ -/]*|\][^\x07\x1b]*\x1b?|[P^_X][^\x1b]*\x1b?|[ -/])?\Z")


def _width(char: str) -> int:
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


class Screen:
    """``columns`` x ``rows`` of characters; ``display`` is the rows as strings (pyte's ``display``)."""

    def __init__(self, columns: int, rows: int) -> None:
        self.columns, self.rows = columns, rows
        self.lines = [[" "] * columns for _ in range(rows)]
        self.x = self.y = 0
        self._wrap = False  # the last column was written: the next character goes to the next line
        self._tail = ""

    @property
    def display(self) -> list[str]:
        return ["".join(line) for line in self.lines]

    def row(self, index: int) -> str:
        return "".join(self.lines[index])

    # -- parsing ----------------------------------------------------------------------------------

    def feed(self, data: str) -> None:
        if self._tail:
            data, self._tail = self._tail + data, ""
        cut = data.rfind("\x1b")
        if cut >= 0 and _INCOMPLETE.match(data, cut):
            data, self._tail = data[:cut], data[cut:]
        for match in _SEQUENCE.finditer(data):
            text = match.group(5)
            if text is not None:
                self._draw(text)
                continue
            final = match.group(3)
            if final is not None:
                self._csi(match.group(1), match.group(2), final)
                continue
            control = match.group(4)
            if control is not None:
                self._control(control)
            elif match.group(0) == "\x1bc":
                self._erase(0, 0, self.rows - 1, self.columns)
                self.x = self.y = 0

    def _control(self, char: str) -> None:
        if char == "\r":
            self.x, self._wrap = 0, False
        elif char in "\n\x0b\x0c":
            self._line_feed()
        elif char == "\b":
            self.x, self._wrap = max(0, self.x - 1), False
        elif char == "\t":
            self.x = min(self.columns - 1, (self.x // 8 + 1) * 8)

    def _line_feed(self) -> None:
        self._wrap = False
        if self.y == self.rows - 1:
            del self.lines[0]
            self.lines.append([" "] * self.columns)
        else:
            self.y += 1

    def _draw(self, text: str) -> None:
        columns = self.columns
        if text.isascii():
            while text:
                if self._wrap:
                    self.x = 0
                    self._line_feed()
                room = columns - self.x
                part, text = text[:room], text[room:]
                self.lines[self.y][self.x:self.x + len(part)] = part
                if self.x + len(part) >= columns:
                    self.x, self._wrap = columns - 1, True
                else:
                    self.x += len(part)
            return
        for char in text:
            width = _width(char) if char > "\u00ff" else 1
            if unicodedata.combining(char):
                continue  # (pyte joins it to the previous cell; the benchmark never looks for one)
            if self._wrap or self.x + width > columns:
                self.x = 0
                self._line_feed()
            line = self.lines[self.y]
            line[self.x] = char
            if width == 2:
                line[self.x + 1] = ""
            if self.x + width >= columns:
                self.x, self._wrap = columns - 1, True
            else:
                self.x += width

    def _csi(self, private: str, parameters: str, final: str) -> None:
        if final == "r":  # scroll region (Textual never sets one): the cursor goes home
            self.x = self.y = 0
            return
        if private or final not in "HfABeCaDG`dEFKJX":
            return  # colours, modes (pyte draws no alternate screen either), reports, cursor shape, kitty flags
        values = [int(value) if value.isdigit() else 0 for value in parameters.split(";")] if parameters else []
        first = values[0] if values else 0
        count = max(1, first)
        self._wrap = False
        if final in "Hf":
            row = values[0] if values else 1
            column = values[1] if len(values) > 1 else 1
            self.y = min(max(row, 1), self.rows) - 1
            self.x = min(max(column, 1), self.columns) - 1
        elif final == "A":
            self.y = max(0, self.y - count)
        elif final in "Be":
            self.y = min(self.rows - 1, self.y + count)
        elif final in "Ca":
            self.x = min(self.columns - 1, self.x + count)
        elif final == "D":
            self.x = max(0, self.x - count)
        elif final in "G`":
            self.x = min(max(first, 1), self.columns) - 1
        elif final == "d":
            self.y = min(max(first, 1), self.rows) - 1
        elif final == "E":
            self.x, self.y = 0, min(self.rows - 1, self.y + count)
        elif final == "F":
            self.x, self.y = 0, max(0, self.y - count)
        elif final == "K":
            if first == 0:
                self._erase(self.y, self.x, self.y, self.columns)
            elif first == 1:
                self._erase(self.y, 0, self.y, self.x + 1)
            else:
                self._erase(self.y, 0, self.y, self.columns)
        elif final == "J":
            if first == 0:
                self._erase(self.y, self.x, self.y, self.columns)
                self._erase(self.y + 1, 0, self.rows - 1, self.columns)
            elif first == 1:
                self._erase(0, 0, self.y - 1, self.columns)
                self._erase(self.y, 0, self.y, self.x + 1)
            else:
                self._erase(0, 0, self.rows - 1, self.columns)
        elif final == "X":
            self._erase(self.y, self.x, self.y, min(self.columns, self.x + count))

    def _erase(self, top: int, left: int, bottom: int, right: int) -> None:
        """Blank rows top..bottom (inclusive), columns left..right-1 of each (the whole row for the inner ones)."""
        for y in range(max(0, top), min(self.rows - 1, bottom) + 1):
            start = left if y == top else 0
            end = right if y == bottom else self.columns
            if end > start:
                self.lines[y][start:end] = [" "] * (end - start)
