"""``awdlstm data get``: fetch a benchmark corpus from where the research community gets it,
check it, and lay it out as ``ROOT/NAME/{train,valid,test}.txt``.

Only the standard library speaks HTTP. A download goes to ``ROOT/.get-NAME/`` and a cut one is
resumed with an HTTP Range request (in the same command, and by running it again); the
archive's checksums are verified before anything is unpacked, and each unpacked file is
verified before the corpus directory appears under its name in one rename. A complete copy
already in place is left alone. ``$AWDLSTM_DOWNLOAD_BASE`` (or ``base_url``) points every
source at a mirror that serves the archives by file name.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class File:
    member: str
    """Path inside the archive."""
    sha256: str | None
    """SHA-256 of the unpacked file, or None where none is known."""
    lines: int | None = None
    """Lines in the file (checked where no SHA-256 is known)."""


@dataclass(frozen=True)
class Source:
    archive: str
    urls: tuple[str, ...]
    """The archive's addresses, tried in order."""
    files: dict[str, File]
    """Split -> member of the archive."""
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    checksums_from: str = ""
    """Where the sums above were published."""


_SIMPLE_EXAMPLES = ("http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",)
_WT = ("https://wikitext.smerity.com/{}", "https://s3.amazonaws.com/research.metamind.io/wikitext/{}")

SOURCES: dict[str, Source] = {
    "ptb": Source(
        archive="simple-examples.tgz", urls=_SIMPLE_EXAMPLES,
        files={
            "train": File("simple-examples/data/ptb.train.txt",
                          "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
            "valid": File("simple-examples/data/ptb.valid.txt",
                          "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
            "test": File("simple-examples/data/ptb.test.txt",
                         "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
        },
        checksums_from="no published checksum of the archive was found; the unpacked files are checked "
                       "against SHA-256 sums of copies whose MD5s equal those torchtext publishes for PennTreebank",
    ),
    "ptb-char": Source(
        archive="simple-examples.tgz", urls=_SIMPLE_EXAMPLES,
        files={
            "train": File("simple-examples/data/ptb.char.train.txt",
                          "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9"),
            "valid": File("simple-examples/data/ptb.char.valid.txt",
                          "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8"),
            "test": File("simple-examples/data/ptb.char.test.txt",
                         "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe"),
        },
        checksums_from="no published checksum of the archive was found; the unpacked files are checked "
                       "against SHA-256 sums of copies matched to public repositories by git blob id",
    ),
    "wikitext-2": Source(
        archive="wikitext-2-v1.zip", urls=tuple(u.format("wikitext-2-v1.zip") for u in _WT),
        files={
            "train": File("wikitext-2/wiki.train.tokens",
                          "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
            "valid": File("wikitext-2/wiki.valid.tokens",
                          "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
            "test": File("wikitext-2/wiki.test.tokens",
                         "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
        },
        sha256="92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c",
        md5="542ccefacc6c27f945fb54453812b3cd", size=4_475_746,
        checksums_from="archive SHA-256 and size: Hugging Face datasets (datasets/wikitext/dataset_infos.json); "
                       "MD5: torchtext (WikiText2); unpacked files: SHA-256 of the copies in pytorch/examples",
    ),
    "wikitext-103": Source(
        archive="wikitext-103-v1.zip", urls=tuple(u.format("wikitext-103-v1.zip") for u in _WT),
        files={
            "train": File("wikitext-103/wiki.train.tokens", None, lines=1_801_350),
            "valid": File("wikitext-103/wiki.valid.tokens", None, lines=3_760),
            "test": File("wikitext-103/wiki.test.tokens", None, lines=4_358),
        },
        sha256="242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590",
        md5="9ddaacaf6af0710eda8c456decff7832", size=190_229_076,
        checksums_from="archive SHA-256 and size: Hugging Face datasets (datasets/wikitext/dataset_infos.json); "
                       "MD5 and line counts: torchtext (WikiText103); no SHA-256 of the unpacked files is known",
    ),
}
"""Where each corpus comes from and the sums it must match (the README has the same table)."""

class DownloadCut(DataError):
    """The connection broke before the end; the partial file is kept for the next attempt."""


RETRY_PAUSE = 2.0
"""Seconds before the first retry of a cut download (then twice that, ...)."""

MANIFEST = "SHA256SUMS"
"""Written into each corpus directory: the sums of its files when they were verified."""


# ---------------------------------------------------------------------------- checking


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8", newline=None) as f:  # text mode, as the corpus reader
        return sum(1 for _ in f)


def _read_manifest(corpus: Path) -> dict[str, str]:
    try:
        rows = (corpus / MANIFEST).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    return {name: digest for digest, _, name in (r.partition("  ") for r in rows) if name}


def installed(name: str, corpus: Path) -> str | None:
    """None if ``corpus`` is a complete copy of ``name``, else what is wrong with it. Files
    without a published SHA-256 are checked against the manifest written when they were verified."""
    manifest = _read_manifest(corpus)
    for split, f in SOURCES[name].files.items():
        path = corpus / f"{split}.txt"
        if not path.is_file():
            return f"{path.name} is missing"
        expected = f.sha256 or manifest.get(path.name)
        if expected is None:
            return f"{path.name} has no recorded checksum"
        if _digest(path, "sha256") != expected:
            return f"{path.name} has another SHA-256 than expected"
    return None


def _verify_archive(src: Source, path: Path) -> None:
    size = path.stat().st_size
    if src.size is not None and size != src.size:
        raise DataError(f"{src.archive}: {size:,} bytes downloaded, expected {src.size:,}; nothing was unpacked")
    for algo in ("sha256", "md5"):
        expected = getattr(src, algo)
        if expected is not None and _digest(path, algo) != expected:
            raise DataError(f"{src.archive}: {algo.upper()} does not match the published one ({expected}); "
                            "the download is damaged or the file has changed upstream; nothing was unpacked")


# ---------------------------------------------------------------------------- HTTP


def _user_agent() -> str:
    return f"awdlstm/{__version__} (python urllib)"


def fetch(url: str, part: Path, *, attempts: int = 3, timeout: float = 60.0) -> None:
    """Download ``url`` into ``part``, continuing from its current size with a Range request.
    A cut connection is retried ``attempts`` times in all; the partial file is kept either way."""
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _user_agent()}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                if have and resp.status != 206:  # the server ignored the range: start over
                    have = 0
                length = resp.headers.get("Content-Length")
                expected = None if length is None else have + int(length)
                with open(part, "ab" if have else "wb") as out:
                    shutil.copyfileobj(resp, out, 1 << 20)
            if expected is not None and part.stat().st_size < expected:
                raise http.client.IncompleteRead(b"", expected - part.stat().st_size)
            return
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the partial file is complete
                return
            raise DataError(f"{url}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            got = part.stat().st_size if part.exists() else 0
            if attempt == attempts:
                reason = getattr(err, "reason", None) or type(err).__name__
                raise DownloadCut(f"{url}: download cut after {got:,} bytes ({reason}); "
                                "run the same command again to resume it") from None
            log.warning("%s: connection cut after %s bytes (%s); resuming", url, f"{got:,}", type(err).__name__)
            time.sleep(RETRY_PAUSE * attempt)


# ---------------------------------------------------------------------------- unpacking


def _unpack(src: Source, archive: Path, dest: Path) -> None:
    """Copy the split files out of the archive into ``dest/{split}.txt`` (only those members,
    so no member path ever decides where a file is written)."""
    dest.mkdir(parents=True)
    wanted = {f.member: split for split, f in src.files.items()}
    found: set[str] = set()
    try:
        if src.archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    name = info.filename.removeprefix("./")
                    if name in wanted and not info.is_dir():
                        with z.open(info) as r, open(dest / f"{wanted[name]}.txt", "wb") as w:
                            shutil.copyfileobj(r, w, 1 << 20)
                        found.add(name)
        else:
            with tarfile.open(archive, "r:*") as t:
                for info in t:
                    name = info.name.removeprefix("./")
                    if name in wanted and info.isfile():
                        r = t.extractfile(info)
                        assert r is not None
                        with r, open(dest / f"{wanted[name]}.txt", "wb") as w:
                            shutil.copyfileobj(r, w, 1 << 20)
                        found.add(name)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(f"{src.archive}: cannot be unpacked ({first_line})") from None
    missing = sorted(set(wanted) - found)
    if missing:
        raise DataError(f"{src.archive}: has no member {missing[0]}; the archive's layout has changed")


def _verify_files(src: Source, dest: Path) -> None:
    lines = []
    for split, f in src.files.items():
        path = dest / f"{split}.txt"
        digest = _digest(path, "sha256")
        if f.sha256 is not None and digest != f.sha256:
            raise DataError(f"{src.archive}: {f.member} has another SHA-256 than the published corpus; "
                            "nothing was installed")
        if f.lines is not None and _count_lines(path) != f.lines:
            raise DataError(f"{src.archive}: {f.member} does not have the expected {f.lines:,} lines; "
                            "nothing was installed")
        lines.append(f"{digest}  {split}.txt\n")
    (dest / MANIFEST).write_text("".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------- the command


def get(name: str, root: Path | str = "data", *, base_url: str | None = None) -> tuple[Path, bool]:
    """Make ``root/name`` a verified copy of the corpus. Returns (its directory, whether it was
    downloaded now); a verified copy already there is left alone."""
    if name not in SOURCES:
        raise DataError(f"unknown corpus {name!r}; awdlstm can get: {', '.join(SOURCES)}")
    src = SOURCES[name]
    root = Path(root).expanduser()
    corpus = root / name
    if corpus.exists():
        problem = installed(name, corpus)
        if problem is None:
            log.info("%s is already a complete, verified copy of %s", corpus, name)
            return corpus, False
        raise DataError(f"{corpus} exists but is not a complete copy of {name} ({problem}); "
                        "move it away or pass another --data-root")
    base = base_url or os.environ.get("AWDLSTM_DOWNLOAD_BASE")
    urls = (f"{base.rstrip('/')}/{src.archive}",) if base else src.urls
    made_root = not root.exists()
    work = root / f".get-{name}"
    work.mkdir(parents=True, exist_ok=True)
    part = work / f"{src.archive}.part"
    try:
        last_error: DataError | None = None
        for url in urls:
            log.info("downloading %s from %s", src.archive, url)
            try:
                fetch(url, part)
                break
            except DownloadCut:
                raise  # the partial file belongs to this mirror: resume from it next time
            except DataError as err:
                last_error = err  # refused (e.g. HTTP 403/404): try the next address
        else:
            assert last_error is not None
            raise last_error
        _verify_archive(src, part)
        unpacked = work / name
        shutil.rmtree(unpacked, ignore_errors=True)
        _unpack(src, part, unpacked)
        _verify_files(src, unpacked)
        os.replace(unpacked, corpus)
    except DownloadCut:
        raise
    except DataError:  # a damaged or refused download is of no use: leave nothing behind
        shutil.rmtree(work, ignore_errors=True)
        if made_root:
            _rmdir_if_empty(root)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return corpus, True


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
