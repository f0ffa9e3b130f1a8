"""Drive a server with Triton's unmodified tritonclient; print what it saw as JSON.

Runs in its own process: tritonclient's generated `inference.*` messages and bnserve's
cannot live in one protobuf registry. Usage: triton_probe.py ADDRESS MODEL INPUT.npy OUT.npy
"""

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def main() -> None:
    address, model, input_path, output_path = sys.argv[1:5]
    x = np.load(input_path)
    client = triton.InferenceServerClient(url=address)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata(model, as_json=True),
    }
    name = report["model_metadata"]["inputs"][0]["name"]
    output_name = report["model_metadata"]["outputs"][0]["name"]
    tensor = triton.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], outputs=[triton.InferRequestedOutput(output_name)],
                          request_id="triton-1")
    np.save(output_path, result.as_numpy(output_name))
    report["response"] = result.get_response(as_json=True)
    report["response"].pop("raw_output_contents", None)
    try:
        client.infer("no-such-model", [tensor])
    except InferenceServerException as exc:
        report["unknown_model_error"] = {"status": exc.status(), "message": exc.message()}
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
