"""`awdlstm data get` against an HTTP server on 127.0.0.1 serving small archives in the real
layouts (a zip for WikiText, a gzipped tar for simple-examples); nothing leaves this machine."""

import dataclasses
import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile

import pytest

from awdlstm import download
from awdlstm.cli import main
from awdlstm.download import SOURCES, DownloadCut, File, get

TEXT = {"train": " the cat sat on the mat \n a dog ran \n" * 200,
        "valid": " the dog sat \n a cat \n" * 20,
        "test": " a mat ran \n the cat \n" * 20}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_archive(src) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(src.files["train"].member.rsplit("/", 1)[0] + "/", "")
        for split, f in src.files.items():
            z.writestr(f.member, TEXT[split])
    return buf.getvalue()


def tgz_archive(src) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for split, f in src.files.items():
            data = TEXT[split].encode()
            info = tarfile.TarInfo("./" + f.member)  # the real archive's members start with ./
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("./simple-examples/data/README")
        info.size = 5
        t.addfile(info, io.BytesIO(b"hello"))
    return buf.getvalue()


class Server:
    """Serves ``files`` by name with Range support; the first ``cuts`` responses stop after
    ``cut_at`` bytes of the body (the server closes the connection)."""

    def __init__(self):
        self.files, self.requests, self.cuts, self.cut_at = {}, [], 0, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((name, self.headers.get("Range")))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cuts > 0:
                    server.cuts -= 1
                    self.wfile.write(body[: server.cut_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(download, "RETRY_PAUSE", 0.0)
    with Server() as s:
        monkeypatch.setenv("AWDLSTM_DOWNLOAD_BASE", s.url)
        yield s


def publish(monkeypatch, server, name, *, archive_sha=True, file_sha=True):
    """Serve a small archive for ``name`` and point the source table's sums at it."""
    src = SOURCES[name]
    data = zip_archive(src) if src.archive.endswith(".zip") else tgz_archive(src)
    server.files[src.archive] = data
    files = {s: File(f.member, sha(TEXT[s].encode()) if file_sha else None,
                     None if file_sha else TEXT[s].count("\n")) for s, f in src.files.items()}
    fake = dataclasses.replace(src, files=files, size=len(data) if src.size else None,
                               sha256=sha(data) if archive_sha and src.sha256 else src.sha256 and "0" * 64,
                               md5=hashlib.md5(data).hexdigest() if src.md5 else None)
    monkeypatch.setitem(SOURCES, name, fake)
    return data


def test_a_good_download_is_verified_unpacked_and_counted(tmp_path, server, monkeypatch, capsys):
    publish(monkeypatch, server, "wikitext-2")
    root = tmp_path / "data"
    assert main(["-q", "data", "get", "wikitext-2", "--data-root", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    tokens = {s: sum(len(line.split()) + 1 for line in TEXT[s].splitlines()) for s in TEXT}
    assert {s: info[s] for s in TEXT} == tokens and info["vocab"] == len(set(TEXT["train"].split())) + 1  # and <eos>
    for split, text in TEXT.items():
        assert (root / "wikitext-2" / f"{split}.txt").read_text() == text
    assert sorted(p.name for p in root.iterdir()) == ["wikitext-2"]  # no download left behind
    assert server.requests == [("wikitext-2-v1.zip", None)]


def test_a_cut_connection_is_resumed_with_a_range_request(tmp_path, server, monkeypatch, capsys):
    data = publish(monkeypatch, server, "ptb")
    server.cuts, server.cut_at = 1, len(data) // 3
    assert main(["-q", "data", "get", "ptb", "--data-root", str(tmp_path)]) == 0
    train_tokens = sum(len(line.split()) + 1 for line in TEXT["train"].splitlines())
    assert f"train {train_tokens:,}, valid" in capsys.readouterr().out  # as `awdlstm data info` prints
    assert server.requests == [("simple-examples.tgz", None), ("simple-examples.tgz", f"bytes={len(data) // 3}-")]
    assert (tmp_path / "ptb" / "valid.txt").read_text() == TEXT["valid"]


def test_a_download_cut_every_time_is_kept_and_resumed_by_the_next_command(tmp_path, server, monkeypatch, capsys):
    data = publish(monkeypatch, server, "ptb-char")
    step = len(data) // 5
    server.cuts, server.cut_at = 3, step  # every attempt of the first command is cut
    with pytest.raises(DownloadCut, match="run the same command again"):
        get("ptb-char", tmp_path)
    part = tmp_path / ".get-ptb-char" / "simple-examples.tgz.part"
    assert part.stat().st_size == 3 * step and not (tmp_path / "ptb-char").exists()
    server.requests.clear()
    assert main(["-q", "data", "get", "ptb-char", "--data-root", str(tmp_path)]) == 0
    assert server.requests == [("simple-examples.tgz", f"bytes={3 * step}-")]
    assert (tmp_path / "ptb-char" / "train.txt").read_bytes() == TEXT["train"].encode()
    assert not (tmp_path / ".get-ptb-char").exists()


@pytest.mark.parametrize("what", ["archive", "file"])
def test_a_wrong_checksum_is_a_one_line_error_and_leaves_nothing(tmp_path, server, monkeypatch, capsys, what):
    name = "wikitext-2" if what == "archive" else "ptb"
    publish(monkeypatch, server, name, archive_sha=what != "archive")
    if what == "file":  # simple-examples has no published archive sum: the unpacked files are checked
        src = SOURCES[name]
        bad = dict(src.files, valid=File(src.files["valid"].member, "1" * 64))
        monkeypatch.setitem(SOURCES, name, dataclasses.replace(src, files=bad))
    root = tmp_path / "data"
    assert main(["-q", "data", "get", name, "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "SHA" in err
    assert not root.exists()  # not even the data root it would have made
    root.mkdir()
    assert main(["-q", "data", "get", name, "--data-root", str(root)]) == 2
    assert list(root.iterdir()) == []


def test_an_existing_complete_copy_is_left_alone(tmp_path, server, monkeypatch, capsys):
    publish(monkeypatch, server, "wikitext-103", file_sha=False)  # no published file sums: lines, then the manifest
    assert main(["-q", "data", "get", "wikitext-103", "--data-root", str(tmp_path)]) == 0
    assert (tmp_path / "wikitext-103" / download.MANIFEST).is_file()
    server.requests.clear()
    capsys.readouterr()
    mtime = (tmp_path / "wikitext-103" / "train.txt").stat().st_mtime_ns
    assert main(["-q", "data", "get", "wikitext-103", "--data-root", str(tmp_path)]) == 0
    assert "already there" in capsys.readouterr().out
    assert server.requests == [] and (tmp_path / "wikitext-103" / "train.txt").stat().st_mtime_ns == mtime
    (tmp_path / "wikitext-103" / "test.txt").write_text("changed\n")
    assert main(["-q", "data", "get", "wikitext-103", "--data-root", str(tmp_path)]) == 2
    assert "not a complete copy" in capsys.readouterr().err and server.requests == []


def test_unknown_corpus_and_refused_download(tmp_path, server, capsys):
    assert main(["-q", "data", "get", "enwik8", "--data-root", str(tmp_path)]) == 2
    assert "can get: ptb, ptb-char, wikitext-2, wikitext-103" in capsys.readouterr().err
    assert main(["-q", "data", "get", "ptb", "--data-root", str(tmp_path / "d")]) == 2  # the server has no file
    assert "HTTP 404" in capsys.readouterr().err and not (tmp_path / "d").exists()


@pytest.mark.corpus
def test_the_source_table_uses_the_sums_of_the_shared_corpora(shared_data):
    """The unpacked-file sums are those of the corpora checked into the shared data folder."""
    sums = dict(line.split()[::-1] for line in (shared_data / "SHA256SUMS").read_text().splitlines())
    for name in ("ptb", "ptb-char", "wikitext-2"):
        for split, f in SOURCES[name].files.items():
            assert f.sha256 == sums[f"{name}/{split}.txt"]
    assert all(u.startswith(("http://", "https://")) for s in SOURCES.values() for u in s.urls)
