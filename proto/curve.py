"""CURVE keys for endpoints that leave loopback: generation, loading, and the authenticator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


@dataclass(frozen=True)
class CurveServerKeys:
    """The server's secret key file; `clients_dir`: public keys of the only clients let in."""

    secret_file: Path
    clients_dir: Path | None = None


@dataclass(frozen=True)
class CurveClientKeys:
    """The server's public key file; the client's own secret key file (None: a fresh key pair)."""

    server_public_file: Path
    secret_file: Path | None = None


def generate_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (both keys) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise FileNotFoundError(f"CURVE key file {path} does not exist")
    public, secret_key = zmq.auth.load_certificate(str(path))
    if secret and secret_key is None:
        raise ValueError(f"CURVE key file {path} holds no secret key (use the .key_secret file)")
    return public, secret_key


def secure_server(socket: zmq.Socket, keys: CurveServerKeys) -> ThreadAuthenticator | None:
    """Make `socket` a CURVE server; returns the authenticator to stop when the socket closes."""
    public, secret = _load(keys.secret_file, secret=True)
    authenticator = None
    if keys.clients_dir is not None:
        if not keys.clients_dir.is_dir():
            raise FileNotFoundError(f"CURVE clients directory {keys.clients_dir} does not exist")
        authenticator = ThreadAuthenticator(socket.context)
        authenticator.start()
        authenticator.configure_curve(domain="*", location=str(keys.clients_dir))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return authenticator


def secure_client(socket: zmq.Socket, keys: CurveClientKeys) -> None:
    server_public, _ = _load(keys.server_public_file, secret=False)
    if keys.secret_file is None:
        public, secret = zmq.curve_keypair()
    else:
        public, secret = _load(keys.secret_file, secret=True)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public
