"""Drive ModelStreamInfer with Triton's unmodified tritonclient; print what it saw as JSON.

    triton_stream_probe.py ADDRESS MODEL ITEMS.npy OUT_FOLDER

Each image of ITEMS.npy (N, 1, 8, 8) goes as its own request; request 3 is replaced by one of
the wrong shape. Both of tritonclient's stream APIs: ``start_stream(callback)`` +
``async_stream_infer`` (sync) and ``grpc.aio``'s ``stream_infer``. The outputs of the good
requests are saved as OUT_FOLDER/sync.npy and aio.npy. Runs in its own process (tritonclient
and bnserve define the same protobuf names).
"""

import asyncio
import json
import sys
import threading
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio

BAD = 3
OUTPUT = "probabilities"


def inputs_for(images: np.ndarray, module) -> list:
    tensors = []
    for index in range(len(images)):
        x = images[index : index + 1] if index != BAD else np.zeros((1, 1, 4, 4), np.float32)
        tensor = module.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        tensors.append(tensor)
    return tensors


def seen(result, error) -> dict:
    if error is not None:
        return {"error": error.message()}
    response = result.get_response(as_json=True)
    return {"id": response.get("id", ""), "output": result.as_numpy(OUTPUT).tolist(),
            "final": response.get("parameters", {}).get("triton_final_response", {})}


def run_sync(address: str, model: str, images: np.ndarray) -> list:
    client = triton.InferenceServerClient(url=address)
    answers: list = []
    done = threading.Event()

    def callback(result, error):
        answers.append(seen(result, error))
        if len(answers) == len(images):
            done.set()

    client.start_stream(callback=callback, stream_timeout=60)
    for index, tensor in enumerate(inputs_for(images, triton)):
        client.async_stream_infer(model, [tensor], request_id=f"s{index}",
                                  outputs=[triton.InferRequestedOutput(OUTPUT)])
    if not done.wait(60):
        raise SystemExit(f"only {len(answers)} of {len(images)} answers came back")
    client.stop_stream()
    client.close()
    return answers


async def run_aio(address: str, model: str, images: np.ndarray) -> list:
    client = triton_aio.InferenceServerClient(url=address)

    async def requests():
        for index, tensor in enumerate(inputs_for(images, triton_aio)):
            yield {"model_name": model, "inputs": [tensor], "request_id": f"a{index}"}

    answers = [seen(result, error)
               async for result, error in client.stream_infer(requests(), stream_timeout=60)]
    await client.close()
    return answers


def main() -> None:
    address, model, items, out = sys.argv[1], sys.argv[2], np.load(sys.argv[3]), Path(sys.argv[4])
    report = {"sync": run_sync(address, model, items),
              "aio": asyncio.run(run_aio(address, model, items))}
    for name, answers in report.items():
        np.save(out / f"{name}.npy", np.concatenate(
            [np.array(a["output"], np.float32) for a in answers if "output" in a]))
        for answer in answers:
            answer.pop("output", None)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
