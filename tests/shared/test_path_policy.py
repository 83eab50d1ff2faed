"""Which paths a remote request may name: absolute ones, and with allowed roots only
those that stay under one of them once `..` and symbolic links are resolved."""

import os
from types import SimpleNamespace

import pytest

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.options import ANY_ABSOLUTE_PATH, PathPolicy

NAMES = ("model_dir", "output_dir")


def request(**paths):
    return SimpleNamespace(**{name: paths.get(name, "") for name in NAMES})


def test_any_absolute_path_by_default_but_never_a_relative_one(tmp_path):
    ANY_ABSOLUTE_PATH.check(request(model_dir="/anywhere/model", output_dir=str(tmp_path)), NAMES, "converter")
    with pytest.raises(InvalidInput, match="output_dir 'out' must be an absolute path"):
        ANY_ABSOLUTE_PATH.check(request(output_dir="out"), NAMES, "converter")


def test_allowed_roots_confine_every_path(tmp_path):
    root, other = tmp_path / "data", tmp_path / "data2"
    root.mkdir(), other.mkdir()
    (root / "escape").symlink_to(tmp_path)
    policy = PathPolicy((str(root),))
    policy.check(request(model_dir=str(root / "model"), output_dir=str(root / "new" / "out")), NAMES, "converter")
    policy.check(request(output_dir=str(root)), NAMES, "converter")
    refused = {"a sibling sharing the prefix": other / "out", "a climb out": root / ".." / "out",
               "a symbolic link out": root / "escape" / "out", "the parent": tmp_path}
    for name in NAMES:  # every named path is checked, inputs as well as outputs
        for what, path in refused.items():
            inside = {other: str(root / other) for other in NAMES if other != name}
            with pytest.raises(InvalidInput, match=f"{name} '{path}' is outside the directories"):
                policy.check(request(**inside, **{name: str(path)}), NAMES, "converter")


def test_a_nul_character_is_refused_as_bad_input(tmp_path):
    for policy in (ANY_ABSOLUTE_PATH, PathPolicy((str(tmp_path),))):
        with pytest.raises(InvalidInput, match="contains a NUL character"):
            policy.check(request(output_dir=f"{tmp_path}/out\0x"), NAMES, "converter")


def test_a_root_that_is_a_symbolic_link_is_resolved_too(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    PathPolicy((str(tmp_path / "link"),)).check(request(output_dir=str(tmp_path / "real" / "out")), NAMES, "x")


def test_a_relative_root_is_refused():
    with pytest.raises(InvalidInput, match="--allowed_root 'data' must be an absolute path"):
        PathPolicy(("data",))
