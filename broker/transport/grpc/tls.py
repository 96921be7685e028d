"""Server TLS credentials that follow certificate rotation on disk.

gRPC asks the fetcher for a new configuration at every handshake; it compares the files' modification
times and sizes and returns a fresh configuration only when one of them changed, so rotated server
certificates and client CAs are picked up without a restart.
"""

from __future__ import annotations

import os
import threading

import grpc
import structlog

from broker.config import TlsSettings
from broker.events import Event

log = structlog.get_logger("broker.tls")


class ReloadingTls:
    """Builds ``grpc.ServerCredentials`` and reloads them when the files change."""

    def __init__(self, settings: TlsSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._signature = self._stat()

    def _paths(self) -> list[str]:
        paths = [str(self._settings.cert_file), str(self._settings.key_file)]
        if self._settings.client_ca_file is not None:
            paths.append(str(self._settings.client_ca_file))
        return paths

    def _stat(self) -> tuple[tuple[int, int], ...]:
        signature = []
        for path in self._paths():
            try:
                stat = os.stat(path)
            except OSError:
                signature.append((0, 0))
            else:
                signature.append((stat.st_mtime_ns, stat.st_size))
        return tuple(signature)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        with (
            open(self._settings.key_file, "rb") as key,
            open(self._settings.cert_file, "rb") as cert,
        ):
            pair = (key.read(), cert.read())
        root = None
        if self._settings.client_ca_file is not None:
            with open(self._settings.client_ca_file, "rb") as ca:
                root = ca.read()
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=root)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            signature = self._stat()
            if signature == self._signature:
                return None
            try:
                configuration = self._configuration()
            except OSError as exc:
                log.warning(Event.TLS_RELOADED, ok=False, error=exc.strerror)
                return None
            self._signature = signature
            log.info(Event.TLS_RELOADED, ok=True)
            return configuration

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port``; client certificates are required with a client CA."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            # grpc documents that the fetcher returns None when nothing changed; the stub omits it.
            self._fetch,  # type: ignore[arg-type]
            require_client_authentication=self._settings.client_ca_file is not None,
        )
