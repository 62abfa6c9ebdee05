"""weakpaste.core.jsonfile: hand-written JSON files."""

import pytest

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.jsonfile import read_json


def test_read_json_one_line_errors(tmp_path):
    path = tmp_path / "w.json"
    path.write_bytes(b'\xef\xbb\xbf{"dog": 2}')  # a UTF-8 BOM, as Excel and Notepad write it
    assert read_json(path, what="weights", example="{}") == {"dog": 2}
    path.write_bytes('{"chien": "é"}'.encode("latin-1"))
    with pytest.raises(WeakpasteError) as err:
        read_json(path, what="weights file", example='{"dog": 2}')
    assert str(err.value) == (f"{path}: weights file is not UTF-8 text; save it as UTF-8 JSON "
                              'like {"dog": 2}')
    with pytest.raises(WeakpasteError) as err:
        read_json(tmp_path / "none.json", what="weights file", example="{}")
    assert str(err.value) == f"{tmp_path / 'none.json'}: weights file not found"


def test_read_text_accepts_a_bom_and_refuses_latin1(tmp_path):
    from weakpaste.core.jsonfile import read_text

    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbfimage,labels\n")
    assert read_text(path, what="labels file", fix="save it as UTF-8") == "image,labels\n"
    path.write_bytes("image,labels\ncaf\u00e9.jpg,a\n".encode("latin-1"))
    with pytest.raises(WeakpasteError) as err:
        read_text(path, what="labels file", fix="save it as UTF-8")
    assert str(err.value) == f"{path}: labels file is not UTF-8 text; save it as UTF-8"
