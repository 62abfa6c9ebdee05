import errno
import json
from pathlib import Path

import pytest

from weakpaste.cli import main
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.manifest import (
    check_output_dir,
    is_weakpaste_manifest,
    prepare_output_dir,
    read_weakpaste_manifest,
    write_manifest,
)


def _user_app(root: Path) -> Path:
    """A web app's folder: its own manifest.json (parseable JSON) and a source file."""
    app = root / "app"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text(json.dumps({"name": "My App", "stage": "prod",
                                                   "weakpaste_version": "0.1"}))
    (app / "src" / "index.html").write_text("x")
    return app


def test_write_manifest_marks_the_folder_as_weakpaste(tmp_path):
    doc = write_manifest(tmp_path, stage="viz", config={"a": 1})
    assert doc["tool"] == "weakpaste" and doc["stage"] == "viz"
    assert is_weakpaste_manifest(json.loads((tmp_path / "manifest.json").read_text()))
    assert read_weakpaste_manifest(tmp_path)["config"] == {"a": 1}


@pytest.mark.parametrize("doc", [
    {"name": "My App"},
    {"stage": "viz", "weakpaste_version": "0.1"},  # looks like ours but has no tool marker
    {"tool": "weakpaste", "weakpaste_version": "0.1"},  # no stage
    {"tool": "weakpaste", "stage": "viz"},  # no version
    {"tool": "other", "stage": "viz", "weakpaste_version": "0.1"},
    ["not", "an", "object"],
])
def test_only_a_full_marker_counts(doc):
    assert not is_weakpaste_manifest(doc)


def test_overwrite_refuses_a_folder_with_someone_elses_manifest(tmp_path):
    app = _user_app(tmp_path)
    with pytest.raises(WeakpasteError) as err:
        prepare_output_dir(app, overwrite=True, stage="viz")
    assert str(err.value) == (f"{app}: not a weakpaste output (no manifest.json written by "
                              "weakpaste), so --overwrite will not delete it; choose another "
                              "--out")
    assert (app / "src" / "index.html").read_text() == "x"
    with pytest.raises(WeakpasteError, match=r"nothing to resume \(no viz manifest.json "
                                             r"written by weakpaste\)"):
        prepare_output_dir(app, resume=True, stage="viz")


@pytest.mark.parametrize("flags, message", [
    ({}, "output folder is not empty; pass --overwrite"),
    ({"resume": True}, r"nothing to resume \(no paste manifest.json"),
])
def test_check_output_dir_refuses_what_prepare_refuses_and_changes_nothing(tmp_path, flags,
                                                                           message):
    out = tmp_path / "out"
    out.mkdir()
    write_manifest(out, stage="viz", config={})
    (out / "old.png").write_bytes(b"x")
    before = sorted(p.name for p in out.iterdir())
    for check in (check_output_dir, prepare_output_dir):
        with pytest.raises(WeakpasteError, match=message):
            check(out, stage="paste", **flags)
    assert sorted(p.name for p in out.iterdir()) == before
    # Allowed: --overwrite of a weakpaste output; checking it deletes nothing, preparing does.
    assert check_output_dir(out, overwrite=True, stage="paste") == out
    assert sorted(p.name for p in out.iterdir()) == before
    assert not (tmp_path / "new").exists()
    check_output_dir(tmp_path / "new", stage="paste")
    assert not (tmp_path / "new").exists()
    with pytest.raises(WeakpasteError, match=r"is, contains or lies inside|input"):
        check_output_dir(out, overwrite=True, stage="paste", inputs=[out / "old.png"])


def test_overwrite_deletes_a_weakpaste_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_manifest(out, stage="viz", config={})
    (out / "old.png").write_bytes(b"x")
    assert prepare_output_dir(out, overwrite=True, stage="paste") == out
    assert out.is_dir() and not any(out.iterdir())


def test_viz_overwrite_keeps_a_user_folder(tiny_coco, tmp_path, capsys):
    """The issue's reproduction: a web app's folder survives 'viz --out app --overwrite'."""
    path, images = tiny_coco
    app = _user_app(tmp_path)
    assert main(["viz", str(path), "--images", str(images), "--out", str(app), "--overwrite",
                 "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"weakpaste: error: {app}: not a weakpaste output (no manifest.json written by "
        "weakpaste), so --overwrite will not delete it; choose another --out")
    assert (app / "src" / "index.html").read_text() == "x"


def test_read_only_output_is_one_line(tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(WeakpasteError) as err:
        prepare_output_dir(tmp_path / "out", stage="viz")
    assert str(err.value) == (f"{tmp_path / 'out'}: cannot create the output folder "
                              "(Read-only file system); choose a writable --out")
