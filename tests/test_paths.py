"""PathGuard: a typed path must resolve, symlinks included, inside the allowed roots."""

from __future__ import annotations

import pytest

from studio.errors import ValidationError
from studio.paths import PathGuard
from studio.settings import parse_args


@pytest.fixture
def roots(tmp_path):
    data, models, outside = tmp_path / "data", tmp_path / "models", tmp_path / "outside"
    for folder in (data / "sets" / "stars", models / "Lora", outside):
        folder.mkdir(parents=True)
    (data / "sets" / "stars" / "a.png").write_bytes(b"")
    return data, models, outside


def test_folders_inside_a_root_resolve_to_their_real_path(roots):
    data, models, _ = roots
    guard = PathGuard([data, models])
    assert guard.resolve(str(data / "sets" / "stars"), "folder") == (data / "sets" / "stars").resolve()
    assert guard.resolve("sets/stars", "folder") == (data / "sets" / "stars").resolve()  # relative: the data dir
    assert guard.resolve(str(models / "Lora"), "folder") == (models / "Lora").resolve()
    assert guard.resolve(str(data / "sets" / "stars" / "a.png"), "image", kind="file").name == "a.png"


@pytest.mark.parametrize("typed", ["/etc", "/", "../../..", "sets/../../outside", "~"])
def test_paths_outside_the_roots_are_refused_naming_the_field_and_roots(roots, typed):
    data, models, _ = roots
    with pytest.raises(ValidationError, match="regularization_folder .* outside the folders") as refused:
        PathGuard([data, models]).resolve(typed, "regularization_folder")
    assert refused.value.field == "regularization_folder"
    assert str(data.resolve()) in str(refused.value) and str(models.resolve()) in str(refused.value)


def test_a_symlink_that_leads_outside_is_refused(roots):
    data, models, outside = roots
    (data / "escape").symlink_to(outside)
    with pytest.raises(ValidationError, match="outside the folders"):
        PathGuard([data, models]).resolve(str(data / "escape"), "folder")


def test_missing_empty_and_wrong_kind_are_named(roots):
    data, models, _ = roots
    guard = PathGuard([data, models])
    with pytest.raises(ValidationError, match="folder 'nope' is not a folder inside"):
        guard.resolve("nope", "folder")
    with pytest.raises(ValidationError, match="folder is empty"):
        guard.resolve("  ", "folder")
    with pytest.raises(ValidationError, match="is not a folder"):
        guard.resolve(str(data / "sets" / "stars" / "a.png"), "folder")


def test_allow_dir_adds_a_root(roots, tmp_path):
    data, models, outside = roots
    settings = parse_args(["--data-dir", str(data), "--models-dir", str(models), "--allow-dir", str(outside)])
    assert settings.path_roots == (data.resolve(), models.resolve(), outside.resolve())
    assert PathGuard(settings.path_roots).resolve(str(outside), "folder") == outside.resolve()
