"""Fixtures for the net tests: the peers in netpeers.py, started per test, stopped after."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from netpeers import HttpsServer, WsServer, make_cert, server_ssl_context
from observer import loom


@pytest.fixture(params=loom.available_backends())
def backend(request):
    """Every loom backend this machine runs: net must behave the same on each."""
    return request.param


@pytest.fixture(scope="session")
def certs():
    directory = Path(tempfile.mkdtemp(prefix=f"obnet-{os.getpid()}-{secrets.token_hex(4)}-"))
    try:
        good = make_cert(directory)
        other_dir = directory / "other"
        other_dir.mkdir()
        other = make_cert(other_dir)  # a certificate nobody trusts
        yield {"cert": good[0], "key": good[1], "untrusted_cert": other[0]}
    finally:
        shutil.rmtree(directory, ignore_errors=True)



@pytest.fixture(params=["deflate", None], ids=["server-deflate", "server-plain"])
def ws_server(request, certs):
    server = WsServer(server_ssl_context(certs), request.param).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ws_server_plain(certs):
    server = WsServer(None, "deflate").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def https_server(certs):
    server = HttpsServer(server_ssl_context(certs)).start()
    try:
        yield server
    finally:
        server.stop()
