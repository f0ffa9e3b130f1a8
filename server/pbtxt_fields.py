"""Read a text-format message against its schema, naming the fields the schema lacks.

``text_format.Parse(..., allow_unknown_field=True)`` skips unknown fields without a word,
and cannot skip an unknown ``field [ {...} ]`` list, which Triton configs use. So
``filter_known_fields`` walks the tokens with the schema in hand instead: it names every
field the schema does not declare (by dotted path), keeps the text of the others for the
strict parser, says which top-level fields the text sets (proto3 cannot tell
``max_batch_size: 0`` from no ``max_batch_size``; the text can), and keeps the scalar
values found under unknown fields by dotted path (Triton's ``optimization { graph { level } }``,
which our .proto does not declare, is read from there).
"""

from __future__ import annotations

from google.protobuf import text_format


class _Filter:
    """The token walk behind ``filter_known_fields``."""

    def __init__(self, text: str) -> None:
        self.tokenizer = text_format.Tokenizer(text.splitlines())
        self.unknown: list[str] = []
        self.kept: list[str] = []
        self.present: set[str] = set()  # top-level fields the text sets
        self.values: dict[str, str] = {}  # scalars under unknown fields, by dotted path
        self._line = 0

    def _take(self, keep: bool) -> str:
        token = self.tokenizer.token
        if keep:
            line = getattr(self.tokenizer, "_line", self._line)  # keep line numbers for errors
            if line != self._line:
                self.kept.append("\n" * (line - self._line))
                self._line = line
            self.kept.append(token)
        self.tokenizer.NextToken()
        return token

    def message(self, descriptor, prefix: str, keep: bool, end: str | None) -> None:
        tok = self.tokenizer
        while not tok.AtEnd():
            if end is not None and tok.token == end:
                self._take(keep)
                return
            if tok.token == "[":  # an extension or Any: [type.url] { ... }
                self.unknown.append(prefix + "[extension]") if keep else None
                while self._take(False) != "]":
                    pass
                field, name, known = None, "", False
            else:
                if not tok.token or not (tok.token[0].isalpha() or tok.token[0] == "_"):
                    raise tok.ParseError(f"expected a field name, found {tok.token!r}")
                name = tok.token
                field = descriptor.fields_by_name.get(name) if descriptor is not None else None
                known = keep and field is not None
                if not prefix:
                    self.present.add(name)
                if keep and field is None:
                    self.unknown.append(prefix + name)
                self._take(known)
            child = field.message_type if field is not None else None
            if tok.token == ":":
                self._take(known)
            if tok.token == "[":
                self._take(known)
                while tok.token != "]":
                    self.value(child, prefix + name + ".", known)
                    if tok.token == ",":
                        self._take(known)
                self._take(known)
            else:
                self.value(child, prefix + name + ".", known)
            if tok.token in (",", ";"):
                self._take(known)
        if end is not None:
            raise tok.ParseError(f"missing {end!r}")

    def value(self, descriptor, prefix: str, keep: bool) -> None:
        tok = self.tokenizer
        if tok.AtEnd():
            raise tok.ParseError("a value is missing")
        for opening, closing in (("{", "}"), ("<", ">")):
            if tok.token == opening:
                self._take(keep)
                self.message(descriptor, prefix, keep, end=closing)
                return
        sign = self._take(keep) if tok.token == "-" else ""
        string = tok.token[:1] in ("'", '"')
        text = sign + self._take(keep)
        while string and tok.token[:1] in ("'", '"'):  # "adjacent" "strings" concatenate
            text += self._take(keep)
        if not keep:
            self.values[prefix.rstrip(".")] = text


def filter_known_fields(text: str, descriptor
                        ) -> tuple[str, list[str], set[str], dict[str, str]]:
    """(the text with only the fields ``descriptor`` knows, dotted paths of the others, the
    names of the top-level fields present: proto3 cannot tell ``max_batch_size: 0`` from
    no max_batch_size, the text can; the scalar values under unknown fields, by dotted path,
    as their tokens: ``{"optimization.graph.level": "-1"}``)."""
    walker = _Filter(text)
    walker.message(descriptor, "", keep=True, end=None)
    return " ".join(walker.kept), walker.unknown, walker.present, walker.values
