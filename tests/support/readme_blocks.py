"""The README's marked code blocks, and the rule that compares what a command printed with the
output the README shows.

A block joins the quick path through an HTML comment on the line before its fence, which a
rendered README does not show:

    <!-- quick-path: NAME [floats=TOLERANCE] [fails] -->
    ```python
    ...
    ```
    ```
    what it prints
    ```

What a block is follows from its fence:

- ``python``: a program; the unlabelled fence right after it is what it prints;
- ``sh`` or ``console`` whose lines start with ``$ ``: a transcript, each command followed by
  what it prints;
- ``sh`` without prompts: a script that prints nothing;
- no language: log lines the server writes, in order, each after its timestamp.

Options: ``floats=T`` lets every number with a decimal point differ by up to T (the rest of
the line is compared exactly); ``fails``: every command of the transcript exits non-zero.
In shown output, a line ``...`` stands for lines left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MARKER = re.compile(r"^<!--\s*quick-path:\s*(?P<name>[\w-]+)(?P<options>[^>]*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<language>[\w-]*)\s*$")
PROMPT = "$ "
OMITTED = "..."
FLOAT = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


@dataclass(frozen=True)
class Step:
    """One command of a transcript and the lines the README shows it printing."""

    command: str
    output: tuple[str, ...]


@dataclass(frozen=True)
class Block:
    name: str
    language: str
    text: str
    line: int  # 1-based line of the opening fence in the README
    options: dict[str, str] = field(default_factory=dict)
    output: str | None = None  # the unlabelled fence right after a python block

    @property
    def kind(self) -> str:
        """"python", "transcript", "script" or "log"."""
        if self.language == "python":
            return "python"
        if self.language in ("sh", "console"):
            return "transcript" if self.text.startswith(PROMPT) else "script"
        if self.language == "":
            return "log"
        raise ValueError(f"README line {self.line}: quick-path block {self.name!r} has "
                         f"language {self.language!r}; expected python, sh, console or none")

    @property
    def floats(self) -> float | None:
        return float(self.options["floats"]) if "floats" in self.options else None

    @property
    def fails(self) -> bool:
        return "fails" in self.options

    def steps(self) -> list[Step]:
        """A transcript's commands with their shown output."""
        steps: list[tuple[str, list[str]]] = []
        for line in self.text.splitlines():
            if line.startswith(PROMPT):
                steps.append((line[len(PROMPT):], []))
            elif steps:
                steps[-1][1].append(line)
            else:
                raise ValueError(f"README line {self.line}: {self.name!r} starts with output")
        return [Step(command, tuple(output)) for command, output in steps]


def _options(text: str) -> dict[str, str]:
    options = {}
    for word in text.split():
        key, _, value = word.partition("=")
        options[key] = value
    unknown = set(options) - {"floats", "fails"}
    if unknown:
        raise ValueError(f"unknown quick-path option(s) {sorted(unknown)}")
    return options


def _fence(lines: list[str], start: int) -> tuple[str, str, int] | None:
    """(language, body, index after the closing fence) of a fence opening at ``start``."""
    if start >= len(lines):
        return None
    opening = FENCE.match(lines[start])
    if opening is None:
        return None
    for end in range(start + 1, len(lines)):
        if lines[end].rstrip() == "```":
            return opening["language"], "\n".join(lines[start + 1:end]) + "\n", end + 1
    raise ValueError(f"README line {start + 1}: the fence is never closed")


def quick_path_blocks(markdown: str) -> dict[str, Block]:
    """Every marked block by name, in README order."""
    lines = markdown.splitlines()
    blocks: dict[str, Block] = {}
    for index, line in enumerate(lines):
        marker = MARKER.match(line)
        if marker is None:
            continue
        name = marker["name"]
        fence = _fence(lines, index + 1)
        if fence is None:
            raise ValueError(f"README line {index + 1}: quick-path marker {name!r} is not "
                             "followed by a fence")
        if name in blocks:
            raise ValueError(f"README line {index + 1}: quick-path block {name!r} twice")
        language, text, after = fence
        output = None
        if language == "python":
            shown = _fence(lines, after)
            if shown is None or shown[0] != "":
                raise ValueError(f"README line {index + 2}: python block {name!r} is not "
                                 "followed by the fence that shows its output")
            output = shown[1]
        blocks[name] = Block(name, language, text, index + 2, _options(marker["options"]),
                             output)
    return blocks


def _same_line(shown: str, printed: str, floats: float | None) -> bool:
    if floats is None:
        return shown == printed
    shown_numbers, printed_numbers = FLOAT.findall(shown), FLOAT.findall(printed)
    return (FLOAT.split(shown) == FLOAT.split(printed)
            and len(shown_numbers) == len(printed_numbers)
            and all(abs(float(a) - float(b)) <= floats
                    for a, b in zip(shown_numbers, printed_numbers, strict=True)))


def output_matches(shown: list[str] | tuple[str, ...], printed: list[str], *,
                   floats: float | None = None) -> bool:
    """Whether ``printed`` is what the README shows: line by line, a ``...`` line standing
    for any number of lines, numbers within ``floats`` when given."""
    if not shown:
        return not printed
    if shown[0] == OMITTED:
        return any(output_matches(shown[1:], printed[skip:], floats=floats)
                   for skip in range(len(printed) + 1))
    return (bool(printed) and _same_line(shown[0], printed[0], floats)
            and output_matches(shown[1:], printed[1:], floats=floats))


def log_contains(shown: list[str], log: list[str]) -> list[str]:
    """The shown log lines that do not end a line of ``log`` in order (empty: all found)."""
    position = 0
    for index, expected in enumerate(shown):
        while position < len(log) and not log[position].rstrip().endswith(expected):
            position += 1
        if position == len(log):
            return shown[index:]
        position += 1
    return []
