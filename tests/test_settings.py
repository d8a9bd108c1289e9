"""Command line and launch defaults: local only, sharing needs a login, databases never served."""

from __future__ import annotations

import argparse

import pytest

from app import launch_kwargs
from studio.settings import parse_args, parse_auth


def test_defaults_are_local_and_safe(tmp_path):
    settings = parse_args(["--data-dir", str(tmp_path)])
    kwargs = launch_kwargs(settings)
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["share"] is False and kwargs["auth"] is None
    assert kwargs["allowed_paths"] == [str(tmp_path)]
    assert str(tmp_path / "db") in kwargs["blocked_paths"] and str(settings.models_root) in kwargs["blocked_paths"]
    assert kwargs["enable_monitoring"] is False and kwargs["strict_cors"] is True and kwargs["max_file_size"] == "25mb"


def test_share_without_auth_gets_a_generated_password():
    settings, password = parse_args(["--share"]).with_generated_auth()
    assert password and settings.auth == ("studio", password) and len(password) == 16  # token_urlsafe(12)
    settings, password = parse_args(["--share", "--auth", "me:secret"]).with_generated_auth()
    assert password is None and settings.auth == ("me", "secret")


@pytest.mark.parametrize("bad", ["nopassword", ":x", "user:"])
def test_auth_must_be_user_colon_password(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_auth(bad)


def test_models_dir_and_device_overrides(tmp_path):
    settings = parse_args(["--models-dir", str(tmp_path), "--device", "cpu", "--dtype", "bfloat16", "--offline"])
    assert settings.models_root == tmp_path and settings.device == "cpu" and settings.dtype == "bfloat16"
    assert settings.offline is True
