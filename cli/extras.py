"""Which optional extras of the bnserve distribution are installed, read from its metadata.

pyproject.toml is the one list of what each extra needs; this reads it back from the
installed distribution's ``Requires-Dist`` lines, so a subcommand can say "needs
`pip install 'bnserve[server]'`" before it imports anything heavy.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import metadata

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


# The same import name from another distribution: onnxruntime-gpu provides `onnxruntime`
# (the `cuda` extra installs it instead of the CPU build the `server` extra names).
ALTERNATIVES = {"onnxruntime": ("onnxruntime-gpu",)}
_SELF_EXTRAS = re.compile(r"\[([^\]]+)\]")


@cache
def extra_requirements(distribution: str = "bnserve") -> dict[str, tuple[str, ...]]:
    """extra -> the distribution names it requires, with the extras it names of bnserve
    itself (``bnserve[server-common]``) expanded."""
    direct: dict[str, list[str]] = {}
    nested: dict[str, list[str]] = {}
    try:
        requires = metadata.requires(distribution) or ()
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return {}
    for line in requires:
        requirement, _, marker = line.partition(";")
        found = _EXTRA.search(marker)
        name = _NAME.match(requirement)
        if not (found and name):
            continue
        if name.group(1).lower() == distribution:
            inner = _SELF_EXTRAS.search(requirement)
            if inner:
                nested.setdefault(found.group(1), []).extend(
                    e.strip() for e in inner.group(1).split(","))
        else:
            direct.setdefault(found.group(1), []).append(name.group(1))

    def expand(extra: str, seen: frozenset[str]) -> list[str]:
        names = list(direct.get(extra, ()))
        for inner in nested.get(extra, ()):
            if inner not in seen:
                names += expand(inner, seen | {inner})
        return names

    return {extra: tuple(dict.fromkeys(expand(extra, frozenset({extra}))))
            for extra in set(direct) | set(nested)}


def _installed(name: str) -> bool:
    for candidate in (name, *ALTERNATIVES.get(name.lower(), ())):
        try:
            metadata.distribution(candidate)
            return True
        except metadata.PackageNotFoundError:
            continue
    return False


def missing_for(extra: str, distribution: str = "bnserve") -> list[str]:
    """The distributions of ``extra`` that are not installed ([] when all are, or unknown)."""
    return [name for name in extra_requirements(distribution).get(extra, ())
            if not _installed(name)]
