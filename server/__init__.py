"""bnserve's inference server: Open Inference Protocol over grpc.aio, onnxruntime underneath.

``build_server(settings)`` in ``bnserve.server.app`` is the one composition root.
"""
