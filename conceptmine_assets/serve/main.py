"""Start ``conceptmine serve``: load the query encoder and the index, then run uvicorn."""

from __future__ import annotations

import ipaddress
import socket
import sys

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for anything else (0.0.0.0 included)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning printed before listening beyond loopback (None on loopback)."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}, beyond this machine: the explorer has NO authentication; anyone who "
            "can reach this address can read the store and write reviews")


def check_port(host: str, port: int) -> None:
    """A clear error before start-up when the port is taken or the address is not this machine's."""
    from conceptmine_assets.cli import UsageError

    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a port number (1..65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None


def build(settings):
    """The application for ``settings`` with the encoder loaded (first query answers at once)."""
    from conceptmine_assets.resources.text_query import query_encoder
    from conceptmine_assets.serve.app import create_app
    from conceptmine_assets.serve.store import check_store_exists

    check_store_exists(settings.store)
    encoder = query_encoder(settings)
    encoder.load()
    app = create_app(settings.store, encoder, settings.dataroot)
    app.state.explorer.reader.warm()  # the store's views: opened once, before the first request
    return app


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, verbose: bool = False) -> int:
    import uvicorn

    from conceptmine_assets.settings import load_settings

    settings = load_settings()
    warning = host_warning(host)
    if warning:
        sys.stderr.write(warning + "\n")
    check_port(host, port)
    app = build(settings)
    shown = f"[{host}]" if ":" in host else host
    sys.stdout.write(f"conceptmine serve: http://{shown}:{port}/  (store {settings.store}; Ctrl-C stops)\n")
    sys.stdout.flush()
    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning", access_log=verbose)
    return 0
