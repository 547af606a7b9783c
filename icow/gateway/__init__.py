"""The Open Inference Protocol (KServe v2) gateway: ``icow gateway``, HTTP and gRPC.

Stock ``tritonclient``, the KServe SDK, ``perf_analyzer`` and stubs generated from the
protocol's ``grpc_service.proto`` talk to the fleet through it. It is a client of the fleet
(one shared ``icow.client.AsyncClient`` per process), never the workers' code. Needs
``pip install 'icow[gateway]'``; importing this package alone needs nothing more.
"""
