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


def test_an_output_overlapping_an_input_is_refused_once_paths_are_resolved(tmp_path):
    """`..` collapsed and symbolic links followed before output and inputs are compared:
    with --overwrite, an output that is (or holds, or is inside) an input replaces it."""
    model = tmp_path / "model"
    model.mkdir(), (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(model)
    overlapping = {"a climb back to the input": (model, tmp_path / "x" / ".." / "model"),
                   "the input through a link": (tmp_path / "link", model),
                   "the output inside the input through a link": (model, tmp_path / "link" / "ckpt"),
                   "the output holding the input": (tmp_path / "link", tmp_path / "x" / "..")}
    for policy in (ANY_ABSOLUTE_PATH, PathPolicy((str(tmp_path),))):
        policy.check(request(model_dir=str(model), output_dir=str(tmp_path / "x" / ".." / "ckpt")), NAMES, "x")
        for what, (model_dir, output_dir) in overlapping.items():
            with pytest.raises(InvalidInput, match=f"output directory {output_dir} overlaps the input {model_dir}"):
                policy.check(request(model_dir=str(model_dir), output_dir=str(output_dir)), NAMES, "converter")


def test_a_path_over_its_size_bounds_is_refused_before_it_is_resolved(tmp_path):
    """Bounds first: a path of a few hundred thousand components would take seconds to resolve."""
    hostile = str(tmp_path) + "/a/.." * 200_000
    for policy in (ANY_ABSOLUTE_PATH, PathPolicy((str(tmp_path),))):
        with pytest.raises(InvalidInput, match=f"model_dir is {len(hostile)} bytes long, over the 4095 bytes"):
            policy.check(request(model_dir=hostile), NAMES, "converter")
        with pytest.raises(InvalidInput, match="model_dir .* has a name of 256 bytes, over the 255 bytes"):
            policy.check(request(model_dir=str(tmp_path / ("n" * 256) / "model")), NAMES, "converter")
        with pytest.raises(InvalidInput, match="model_dir .* has a name of 256 bytes, over the 255 bytes"):
            policy.check(request(model_dir=str(tmp_path / ("é" * 128))), NAMES, "converter")  # 128 characters
        policy.check(request(model_dir=str(tmp_path / ("n" * 255))), NAMES, "converter")


def test_an_output_name_leaves_room_for_its_temporary_sibling(tmp_path):
    """An output is written to `.NAME.tmp-<32 hex>` first: its name has 38 bytes less to use."""
    ANY_ABSOLUTE_PATH.check(request(output_dir=str(tmp_path / ("n" * 217))), NAMES, "converter")
    with pytest.raises(InvalidInput, match="output directory .* has a name of 218 bytes, over the 217 bytes"):
        ANY_ABSOLUTE_PATH.check(request(output_dir=str(tmp_path / ("n" * 218))), NAMES, "converter")
