import pytest

from coa.documents import decode_document, read_document
from coa.errors import InputError


def test_plain_utf8_and_bom():
    assert decode_document("héllo wörld".encode()).text == "héllo wörld"
    assert decode_document(b"\xef\xbb\xbfhello").text == "hello"


def test_a_few_invalid_bytes_are_replaced_with_a_warning():
    data = ("good text " * 50).encode() + b"\xff\xfe" + b" more"
    doc = decode_document(data, "f.txt")
    assert doc.text.count("\ufffd") == 2
    assert doc.warnings == ["f.txt: replaced 2 invalid UTF-8 byte sequence(s) with U+FFFD"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b" \n\t \n", "empty"),
        (b"text\x00more", "NUL"),
        (bytes(range(128, 256)) * 10, "mostly not UTF-8"),
    ],
)
def test_unusable_input_is_refused(data, message):
    with pytest.raises(InputError, match=message):
        decode_document(data)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_document(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="is a directory"):
        read_document(tmp_path)
