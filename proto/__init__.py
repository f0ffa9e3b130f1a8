"""Open Inference Protocol (KServe V2) gRPC messages and stubs, generated from the .proto here.

Client and server share only this package. Regenerate with ``make proto``.
"""
