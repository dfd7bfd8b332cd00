"""README speaks for the code: every error code is in its error table, every model setting in its
configuration table."""

from __future__ import annotations

import inspect
from pathlib import Path

from shared import errors
from shared.config import DecodeConfig, ModelConfig

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    return README[start : end if end != -1 else None]


def test_every_error_code_is_in_the_readme_error_table():
    table = section("### HTTP API")
    codes = {cls.code for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, errors.TwinferError)}
    missing = sorted(code for code in codes if f"`{code}`" not in table)
    assert not missing, f"README's error table lacks {missing}"


def test_every_model_setting_is_in_the_readme_configuration_table():
    table = section("## Configuration")
    keys = [name for name in ModelConfig.model_fields if name != "decode"]
    keys += [f"decode.{name}" for name in DecodeConfig.model_fields]
    missing = [key for key in keys if f"`{key}`" not in table]
    assert not missing, f"README's configuration table lacks {missing}"


def test_every_ingress_setting_is_in_the_readme_limits_table():
    from deployments.config import IngressConfig

    table = section("### Limits and admission")
    missing = [name for name in IngressConfig.model_fields if f"`{name}`" not in table]
    assert not missing, f"README's ingress table lacks {missing}"
