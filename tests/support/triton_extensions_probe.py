"""Drive Triton's extensions on a server with unmodified tritonclient; print what it saw as JSON.

    triton_extensions_probe.py ADDRESS TOKEN IMAGES.npy

Runs in its own process (tritonclient and bnserve define the same protobuf names). The
server runs in explicit mode with "digits" loaded and "spare" on disk.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def error(call):
    try:
        call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return None


def main() -> None:
    address, token, images = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
    client = triton.InferenceServerClient(url=address)
    admin = {"authorization": f"Bearer {token}"}
    report = {
        "extensions": client.get_server_metadata(as_json=True).get("extensions", []),
        "config": client.get_model_config("digits", as_json=True)["config"],
        "index_denied": error(lambda: client.get_model_repository_index()),
        "index": client.get_model_repository_index(headers=admin, as_json=True).get("models", []),
    }
    client.load_model("spare", headers=admin)
    report["spare_ready"] = client.is_model_ready("spare")
    client.unload_model("spare", headers=admin)
    report["spare_ready_after_unload"] = client.is_model_ready("spare")
    report["load_unknown"] = error(lambda: client.load_model("nope", headers=admin))

    tensor = triton.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = client.infer("digits", [tensor],
                          outputs=[triton.InferRequestedOutput("probabilities", class_count=3)])
    report["top3"] = [[v.decode() for v in row] for row in result.as_numpy("probabilities")]
    report["statistics"] = client.get_inference_statistics("digits", as_json=True)["model_stats"]
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
