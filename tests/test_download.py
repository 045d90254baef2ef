"""The download path, against a real HTTP server on 127.0.0.1 (there is no internet in CI)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from conftest import write_dataset
from fmnist.cli import main
from fmnist.data import download
from fmnist.data.fashion import FILES
from fmnist.data.idx import read_bytes
from fmnist.data.verify import verify_dir
from fmnist.errors import DataError


@pytest.fixture
def serve():
    """serve(folder) -> base URL of a loopback HTTP server for that folder; stopped after the test."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest's output clean
        pass


def checksums_of(folder: Path) -> dict[str, str]:
    return {stem: hashlib.sha256(read_bytes(folder / (stem + ".gz"))).hexdigest() for stem in FILES.values()}


def test_download_verifies_and_writes_every_file(tmp_path, serve):
    served = write_dataset(tmp_path / "served")
    target = tmp_path / "target"
    download.download(target, [serve(served)], checksums=checksums_of(served))
    for stem in FILES.values():
        assert (target / (stem + ".gz")).read_bytes() == (served / (stem + ".gz")).read_bytes()
    assert not list(target.glob(".*tmp"))  # no temporary files left behind


def test_falls_back_to_the_second_mirror(tmp_path, serve):
    served = write_dataset(tmp_path / "served")
    empty = tmp_path / "empty"
    empty.mkdir()
    target = tmp_path / "target"
    download.download(target, [serve(empty), serve(served)], checksums=checksums_of(served))
    assert all((target / (stem + ".gz")).is_file() for stem in FILES.values())


def test_a_mirror_serving_other_data_is_rejected(tmp_path, serve):
    """The known failure: a mirror answers with MNIST. Same format, different content."""
    expected = checksums_of(write_dataset(tmp_path / "fashion"))
    impostor = write_dataset(tmp_path / "impostor", 300, 100)
    target = tmp_path / "target"
    with pytest.raises(DataError, match="wrong content"):
        download.download(target, [serve(impostor)], checksums=expected)
    assert not any(target.iterdir())  # nothing unverified was kept


def test_unreachable_mirror_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        download.download(tmp_path / "target", ["http://127.0.0.1:9/"])


def test_cli_download_of_the_real_files_from_loopback(tmp_path, serve, real_data, capsys):
    """The official checksums, checked on the real files served over HTTP."""
    served = tmp_path / "served"
    served.mkdir()
    for stem in FILES.values():
        source = real_data / (stem + ".gz")
        if source.exists():
            shutil.copy(source, served / (stem + ".gz"))
        else:
            (served / (stem + ".gz")).write_bytes(gzip.compress((real_data / stem).read_bytes()))
    target = tmp_path / "target"
    assert main(["data", "download", "--dir", str(target), "--mirror", serve(served)]) == 0
    assert "verified" in capsys.readouterr().out
    assert all(problem is None for problem in verify_dir(target).values())
    # Run again: verified files are kept, not fetched again.
    assert main(["data", "download", "--dir", str(target), "--mirror", "http://127.0.0.1:9/"]) == 0


def test_ensure_downloads_into_the_cache_when_nothing_is_found(tmp_path, serve, monkeypatch):
    served = write_dataset(tmp_path / "served")
    monkeypatch.setattr(download, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr("fmnist.data.locate.DEBIAN_DIR", tmp_path / "nowhere")
    directory = download.ensure(mirrors=[serve(served)], use_apt=False, checksums=checksums_of(served))
    assert directory == tmp_path / "cache" / "fmnist"
    assert download.ensure(use_apt=False, checksums=checksums_of(served)) == directory  # found the second time


def test_ensure_refuses_a_copy_that_is_not_fashion_mnist(tiny_data, monkeypatch, capsys):
    """`data ensure` used to check only that four files exist; their content must be the data set."""
    monkeypatch.setenv("FMNIST_DATA", str(tiny_data))
    assert main(["data", "ensure", "--no-apt"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is not the official Fashion-MNIST" in error


def test_ensure_failure_lists_every_way_to_get_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("fmnist.data.locate.DEBIAN_DIR", tmp_path / "nowhere")
    code = main(["data", "ensure", "--no-apt", "--mirror", "http://127.0.0.1:9/"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1
    assert "apt-get install dataset-fashion-mnist" in error and "$FMNIST_DATA" in error
