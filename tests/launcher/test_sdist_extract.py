"""The sdist is unpacked safely on every Python we install on, including Debian bookworm's 3.11.2, whose
tarfile has no extraction filters (the container image's build found `filter="data"` failing there)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from vlgate.launcher import binary


def _tar(path: Path, *, link: bool) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        data = b"int main() {}\n"
        info = tarfile.TarInfo("llama/tools/server/main.cpp")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        if link:
            sym = tarfile.TarInfo("llama/escape")
            sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(sym)
    return path


@pytest.mark.parametrize("filters", [True, False], ids=["with-filters", "without-filters"])
def test_a_plain_sdist_unpacks_and_a_link_out_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         filters: bool) -> None:
    if not filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    out = tmp_path / "ok"
    with tarfile.open(_tar(tmp_path / "ok.tar.gz", link=False)) as tar:
        binary._extract(tar, out)
    assert (out / "llama/tools/server/main.cpp").read_bytes() == b"int main() {}\n"
    bad = tmp_path / "bad"
    with tarfile.open(_tar(tmp_path / "bad.tar.gz", link=True)) as tar, \
            pytest.raises((binary.ServerBinaryError, tarfile.FilterError)):
        binary._extract(tar, bad)
    assert not (bad / "llama/escape").exists()
