"""The download code, against a real HTTP server on 127.0.0.1 (never the internet)."""

import http.server
import threading
from pathlib import Path

import pytest
import torch

from d2sfm.errors import D2sfmError
from d2sfm.features.network import D2Net
from d2sfm.features.weights import KNOWN_WEIGHTS, fetch_known_weights, resolve_weights


class _Server:
    """Serves files from a folder; ``mode`` 'full', 'truncated' (promises the whole length, sends half) or
    'garbage' (the right length of zeros)."""

    def __init__(self, folder: Path):
        self.folder, self.mode, self.requests = folder, "full", []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                path = outer.folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.mode == "truncated":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif outer.mode == "garbage":
                    self.wfile.write(b"\x00" * len(body))
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    torch.save({"model": D2Net().state_dict()}, folder / "d2_tf.pth")
    return folder


@pytest.fixture
def server(served_folder):
    server = _Server(served_folder)
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("D2SFM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("D2SFM_WEIGHTS", raising=False)
    return tmp_path / "cache"


def test_registry_has_the_three_official_checkpoints():
    assert set(KNOWN_WEIGHTS) == {"d2_ots", "d2_tf", "d2_tf_no_phototourism"}
    assert KNOWN_WEIGHTS["d2_tf"].url(None) == "https://dusmanu.com/files/d2-net/d2_tf.pth"


def test_download_once_then_cached(server, cache, monkeypatch):
    monkeypatch.setenv("D2SFM_WEIGHTS_BASE_URL", server.url)
    path = resolve_weights("d2_tf", progress=False)
    assert path == cache / "d2_tf.pth"
    assert torch.load(path, weights_only=True)["model"].keys() == D2Net().state_dict().keys()
    assert resolve_weights(None, progress=False) == path  # default name d2_tf, now from the cache
    assert server.requests == ["/d2_tf.pth"]


@pytest.mark.parametrize("mode", ["truncated", "garbage"])
def test_broken_transfer_never_leaves_a_checkpoint(server, cache, mode):
    server.mode = mode
    with pytest.raises(D2sfmError) as caught:
        fetch_known_weights("d2_tf", progress=False, base_url=server.url)
    assert "\n" not in str(caught.value) and str(cache / "d2_tf.pth") in str(caught.value)
    assert not (cache / "d2_tf.pth").exists()
    assert not list(cache.glob("*")) if cache.exists() else True  # no half-written temporary either
    server.mode = "full"
    assert fetch_known_weights("d2_tf", progress=False, base_url=server.url).is_file()


def test_offline_says_where_to_put_the_file(cache):
    with pytest.raises(D2sfmError) as caught:
        fetch_known_weights("d2_ots", progress=False, base_url="http://127.0.0.1:9")
    message = str(caught.value)
    assert "could not download d2_ots" in message and str(cache / "d2_ots.pth") in message
    assert "--weights" in message


def test_path_and_environment_override(tmp_path, cache, monkeypatch):
    local = tmp_path / "mine.pth"
    torch.save({"model": D2Net().state_dict()}, local)
    assert resolve_weights(str(local)) == local
    monkeypatch.setenv("D2SFM_WEIGHTS", str(local))
    assert resolve_weights(None) == local
    with pytest.raises(D2sfmError, match="not a known checkpoint name"):
        resolve_weights(str(tmp_path / "nope.pth"))
