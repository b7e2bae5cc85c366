"""Channels to the scheduler: plaintext or TLS (optionally mTLS), and the bearer token."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import grpc

#: A PEM value: the bytes themselves, or the path of a file holding them.
Pem = Union[bytes, str, "os.PathLike[str]"]

_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def strip_scheme(target: str) -> tuple[str, bool]:
    """``"https://h:1"`` -> ``("h:1", True)``; ``http://`` and ``grpc://`` mean plaintext."""
    for scheme, tls in (("https://", True), ("grpcs://", True), ("http://", False), ("grpc://", False)):
        if target.startswith(scheme):
            return target[len(scheme) :], tls
    return target, False


def _read(value: Optional[Pem]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    with open(os.fspath(value), "rb") as f:
        return f.read()


def credentials(
    tls: bool,
    root_certificates: Optional[Pem],
    client_cert: Optional[Pem],
    client_key: Optional[Pem],
) -> Optional[grpc.ChannelCredentials]:
    """TLS credentials when any TLS option is set, else ``None`` (plaintext)."""
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together (mutual TLS)")
    if not (tls or root_certificates or client_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(root_certificates),
        private_key=_read(client_key),
        certificate_chain=_read(client_cert),
    )


def token_metadata(token: Optional[str]) -> list[tuple[str, str]]:
    """``authorization: Bearer <token>``, as the scheduler expects it."""
    return [("authorization", f"Bearer {token}")] if token else []


def sync_channel(target: str, creds: Optional[grpc.ChannelCredentials]) -> grpc.Channel:
    if creds is None:
        return grpc.insecure_channel(target, options=_OPTIONS)
    return grpc.secure_channel(target, creds, options=_OPTIONS)


def aio_channel(target: str, creds: Optional[grpc.ChannelCredentials]) -> Any:
    from grpc import aio

    if creds is None:
        return aio.insecure_channel(target, options=_OPTIONS)
    return aio.secure_channel(target, creds, options=_OPTIONS)
