"""Stubs generated from ``proto/tarefa/v1/tarefa.proto`` (package ``tarefa.v1``).

Do not edit ``tarefa_pb2*.py``: run ``python clients/python/check_stubs.py --write`` after a
change to the proto.
"""
