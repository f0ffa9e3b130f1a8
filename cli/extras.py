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


@cache
def extra_requirements(distribution: str = "bnserve") -> dict[str, tuple[str, ...]]:
    """extra -> the distribution names it requires (bnserve's own other extras excluded)."""
    extras: dict[str, list[str]] = {}
    try:
        requires = metadata.requires(distribution) or ()
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return {}
    for line in requires:
        requirement, _, marker = line.partition(";")
        found = _EXTRA.search(marker)
        name = _NAME.match(requirement)
        if found and name and name.group(1).lower() != distribution:
            extras.setdefault(found.group(1), []).append(name.group(1))
    return {extra: tuple(names) for extra, names in extras.items()}


def missing_for(extra: str, distribution: str = "bnserve") -> list[str]:
    """The distributions of ``extra`` that are not installed ([] when all are, or unknown)."""
    missing = []
    for name in extra_requirements(distribution).get(extra, ()):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing
