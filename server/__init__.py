"""bnserve's inference server: Open Inference Protocol over grpc.aio, onnxruntime underneath.

``build_server(settings)`` in ``bnserve.server.app`` is the one composition root.

Recalibration (``recalibration``: re-estimate a version's BatchNorm and input statistics on
unlabeled inputs, publish the next version) runs from a version folder with onnxruntime,
onnx and onnxscript alone::

    recalibration_source  which version to start from (always the base), its graphs
    recalibration_inputs  the inputs checked against the model
    reestimate            layer-by-layer estimation on a statistics graph (fed_session)
    refold                new statistics written, BatchNorm folded as the exporter does
    recalibration_checks  checker, parity, batch independence
    recalibration_card    the new model card and its ``recalibration`` record
"""
