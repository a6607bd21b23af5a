"""A client library for any OCI / Docker V2 registry (Berth, the reference registry, ...).

    from app.client import RegistryClient, copy
    with RegistryClient("registry.example.com") as client:
        for repo in client.catalog():
            print(repo, list(client.tags(repo)))

It talks HTTP only (requests): it imports nothing of the server but app/errors.py's codes
(through its own typed exceptions) and app/registry/references.py's digest checks.
"""

from app.client.auth import Credentials
from app.client.copy import CopyReport, RemoteRepository, Store, copy
from app.client.errors import ClientError, DigestMismatch, RegistryAPIError, TransportError
from app.client.layout import OciLayout
from app.client.media import Manifest
from app.client.registry import BlobReader, Descriptor, RegistryClient

__all__ = [
    "BlobReader",
    "ClientError",
    "CopyReport",
    "Credentials",
    "Descriptor",
    "DigestMismatch",
    "Manifest",
    "OciLayout",
    "RegistryAPIError",
    "RegistryClient",
    "RemoteRepository",
    "Store",
    "TransportError",
    "copy",
]
