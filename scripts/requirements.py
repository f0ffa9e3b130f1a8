"""Print the requirements of bnserve's base install plus one extra, read from pyproject.toml,
with the extras it names of bnserve itself (``bnserve[server-common]``) expanded: what the
Dockerfile installs in a layer of its own, before the project's sources.

    python3 scripts/requirements.py server [pyproject.toml]
"""

import re
import sys

import tomllib

SELF = re.compile(r"bnserve\[([^\]]+)\]")


def expand(extras: dict[str, list[str]], extra: str, seen: frozenset[str] = frozenset()):
    for requirement in extras[extra]:
        nested = SELF.fullmatch(requirement.replace(" ", ""))
        if nested is None:
            yield requirement
            continue
        for inner in nested.group(1).split(","):
            if inner not in seen:
                yield from expand(extras, inner, seen | {extra})


def main() -> None:
    extra = sys.argv[1]
    path = sys.argv[2] if len(sys.argv) > 2 else "pyproject.toml"
    with open(path, "rb") as handle:
        project = tomllib.load(handle)["project"]
    requirements = [*project["dependencies"], *expand(project["optional-dependencies"], extra)]
    print("\n".join(dict.fromkeys(requirements)))


if __name__ == "__main__":
    main()
