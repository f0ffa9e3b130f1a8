"""The model repository contract: what ``bnserve export`` writes and ``bnserve serve`` reads.

    REPOSITORY/
      NAME/                       a model: a plain folder name (``layout.model_name_problem``)
        config.pbtxt              optional: Triton's ModelConfig in protobuf text format
        1/                        a version: ASCII decimal, positive, no leading zero
          model.onnx              the graph (external data files beside it, if any)
          metadata.json           optional: the model card (``card.ModelCard``)
          unfolded.onnx           optional: the graph before BatchNorm folding (the card's
                                  batchnorm.reference_graph), for drift and recalibration
        2/ ...
        .staging-XXXX/            a version being written; renamed to its number when whole

- ``layout``: file names, the version-folder rule, the model-name rule, the platform string.
- ``card``: the model card schema, read and written through one class.
- ``publish``: writing a version atomically (staging folder, rename), never overwriting.
- ``batchnorm``: the BatchNorm layers of a graph and a graph that measures their inputs.
- ``drift``: the drift measure, a layer's and a model's score, threshold calibration.
- ``standardization``: the exporter's ``(input - mean) / std`` in front of the graph,
  found and re-estimated like BatchNorm's statistics.
- ``graph``: walks of an ONNX graph both sides need (BatchNormalization nodes, external
  data locations, tensor signatures, the tables token ids index); imports onnx, so only
  server and training use it.
- ``graph_metadata``: what the exporter writes into the graph's own metadata: the class
  labels (for a graph served without its card) and a text model's tokenizer (its one home;
  the spec itself is ``bnserve.proto.tokenizer``, which the thin client shares).

Both ``bnserve.server`` and ``bnserve.training`` import this package; neither defines any
of it again.
"""
