"""A dotted name that does not import says which part exists and suggests close names."""

from __future__ import annotations

import sys

import pytest

from sessions_kernel import ConfigurationError, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY


@pytest.fixture
def shop(tmp_path, monkeypatch):
    package = tmp_path / "shop_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "from sessions_kernel.testing import make_model\nSession = make_model()\n"
    )
    (package / "broken.py").write_text("import a_dependency_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [m for m in sys.modules if m.startswith("shop_pkg")]:
        del sys.modules[name]


def error(model_class):
    with pytest.raises(ConfigurationError) as info:
        session_factory(model_class=model_class, secret_key=TEST_SECRET_KEY)
    return str(info.value)


def test_misspelt_class(shop):
    assert error("shop_pkg.models.Sessoin") == (
        "session.model_class = 'shop_pkg.models.Sessoin': cannot import "
        "'shop_pkg.models.Sessoin': the module 'shop_pkg.models' exists but has no "
        "'Sessoin'. Did you mean 'Session'?"
    )


def test_misspelt_class_after_a_colon(shop):
    assert "has no 'Sessoin'. Did you mean 'Session'?" in error("shop_pkg.models:Sessoin")


def test_misspelt_module(shop):
    assert "the module 'shop_pkg' exists but has no 'modles'. Did you mean 'models'?" in error(
        "shop_pkg.modles.Session"
    )


def test_missing_package(shop):
    assert "there is no module named 'shopp_pkg' (is its distribution installed?)" in error(
        "shopp_pkg.models.Session"
    )


def test_module_that_fails_to_import(shop):
    message = error("shop_pkg.broken.Session")
    assert "importing the module 'shop_pkg.broken' failed" in message
    assert "a_dependency_nobody_installed" in message


def test_the_right_name_still_resolves(shop):
    factory = session_factory(model_class="shop_pkg.models.Session", secret_key=TEST_SECRET_KEY)
    assert factory.model.__name__ == "Session"
