"""ICOW: Inference with Collected ONNX Weights.

The ``icow`` package holds the core that both sides share and that stays light (msgpack and
numpy only): errors, the tensor codec, the wire protocol, the Redis key schema and settings.
``icow.client`` is the caller's library, ``icow.workers`` the Celery side, ``icow.cli`` the
``icow`` command.
"""

__version__ = "0.1.0"
