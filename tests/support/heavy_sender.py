"""Keeps large ModelInfer calls in flight against a server, from its own process (so that
building and sending 60 MiB messages does not share an interpreter with the measuring
side). Usage: heavy_sender.py ADDRESS SECONDS MODEL:DATATYPE:ROWS:WIDTH:ITEM_BYTES[:PERIOD_S] ...

Each spec gets one thread that sends the same pre-serialized request again and again, one
call at a time, starting one at most every PERIOD_S seconds (so that two servers compared
get the same traffic).
Prints "in flight" once every spec's first call has been answered (the load is on: the
measuring side starts then, instead of sleeping a guess), then, at the end, one JSON line:
per spec, calls answered OK and the status names of the others.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
import time

import grpc
import numpy as np

from bnserve.proto import open_inference_pb2 as pb


def build(model: str, datatype: str, rows: int, width: int, item_bytes: int) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype=datatype, shape=[rows, width])
    if datatype == "BYTES":
        item = struct.pack("<I", item_bytes) + b"t" * item_bytes
        request.raw_input_contents.append(item * (rows * width))
    else:
        request.raw_input_contents.append(np.ones((rows, width), np.float32).tobytes())
    return request.SerializeToString()


def main() -> None:
    address, seconds, *specs = sys.argv[1:]
    options = [("grpc.max_send_message_length", 1 << 27), ("grpc.max_receive_message_length", 1 << 27)]
    results: dict[str, dict[str, int]] = {}
    first_answers = threading.Barrier(len(specs), action=lambda: print("in flight", flush=True))

    def send(spec: str) -> None:
        model, datatype, rows, width, item, *period = spec.split(":")
        every = float(period[0]) if period else 0.0
        data = build(model, datatype, int(rows), int(width), int(item))
        counts = results.setdefault(spec, {})
        with grpc.insecure_channel(address, options=options) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            end = time.monotonic() + float(seconds)
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    call(data, timeout=60)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                counts[code] = counts.get(code, 0) + 1
                if sum(counts.values()) == 1:
                    first_answers.wait(timeout=60)
                time.sleep(max(0.0, started + every - time.monotonic()))

    threads = [threading.Thread(target=send, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
