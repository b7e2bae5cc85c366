"""Tarefa for Python: submit tasks, wait for results, and serve task handlers.

Producer::

    import tarefa

    client = tarefa.Client("127.0.0.1:50051")
    handle = client.submit("fib", {"n": 90})
    print(handle.wait(timeout=60))          # "2880067194370816120"

Handler (run the executor with ``--handler word_count=grpc://127.0.0.1:50061``)::

    def word_count(args):
        return {"words": len(args["text"].split())}

    tarefa.serve({"word_count": word_count}, port=50061)
"""

from tarefa.client import Client, TaskFailed, TaskHandle, decode_result, state_name
from tarefa.handler import Context, Fail, HandlerServer, Retry, serve
from tarefa.v1 import tarefa_pb2 as pb

__all__ = [
    "Client",
    "Context",
    "Fail",
    "HandlerServer",
    "Retry",
    "TaskFailed",
    "TaskHandle",
    "decode_result",
    "pb",
    "serve",
    "state_name",
]

__version__ = "0.1.0"
