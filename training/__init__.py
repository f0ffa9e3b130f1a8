"""Train BatchNorm models and export them, with frozen running statistics, to ONNX.

The flow is one way: a dataset and a model builder (``datasets``, ``models``) feed
``train``, which writes a run folder (``checkpoint``); ``export`` rebuilds the model in eval
mode, exports and verifies it (``verify``) and publishes it into a model repository
(``repository``) that the server reads. ``quick`` builds a small repository for tests.

This module imports nothing heavy: ``bnserve --help`` must work without torch.
"""
