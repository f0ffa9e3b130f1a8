"""Print the protobuf schema of a set of generated modules as JSON (message fields with
number, type, repetition and message/enum type; enum values; service methods).

    python descriptor_dump.py tritonclient.grpc.service_pb2 tritonclient.grpc.model_config_pb2

Used on both sides of the wire-compatibility test, each in its own process, because
tritonclient and bnserve define the same ``inference.*`` names.
"""

from __future__ import annotations

import importlib
import json
import sys


def _message(descriptor, out: dict) -> None:
    if descriptor.GetOptions().map_entry:
        return
    out["messages"][descriptor.full_name] = {
        field.name: [field.number, field.type, field.is_repeated,
                     (field.message_type or field.enum_type).full_name
                     if (field.message_type or field.enum_type) else ""]
        for field in descriptor.fields
    }
    for enum in descriptor.enum_types:
        out["enums"][enum.full_name] = {v.name: v.number for v in enum.values}
    for nested in descriptor.nested_types:
        _message(nested, out)


def dump(module_names: list[str]) -> dict:
    out: dict = {"messages": {}, "enums": {}, "methods": {}}
    for name in module_names:
        file = importlib.import_module(name).DESCRIPTOR
        for message in file.message_types_by_name.values():
            _message(message, out)
        for enum in file.enum_types_by_name.values():
            out["enums"][enum.full_name] = {v.name: v.number for v in enum.values}
        for service in file.services_by_name.values():
            for method in service.methods:
                out["methods"][method.full_name] = [method.input_type.full_name,
                                                    method.output_type.full_name]
    return out


if __name__ == "__main__":
    print(json.dumps(dump(sys.argv[1:])))
