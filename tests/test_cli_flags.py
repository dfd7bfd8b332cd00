"""``twinfer backfill``'s flags are generated from the pydantic configs: every field has one, no
default is restated, and what a flag sets lands in the config field it names."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel

from batch import cli
from batch.config import BackfillConfig
from twinfer.cli import build_parser

BASE = ["backfill", "--input", "/data", "--output", "/out"]


def parse(*extra: str) -> BackfillConfig:
    return cli.config_from_args(build_parser().parse_args([*BASE, *extra]))


def field_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = [
            a
            for a in (annotation, *getattr(annotation, "__args__", ()))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if nested and name in ("model", "decode", "s3"):
            paths |= field_paths(nested[0], (*prefix, name))
        else:
            paths.add((*prefix, name))
    return paths


def test_every_config_field_has_a_flag():
    build_parser()
    assert set(cli._BACKFILL_FLAGS.values()) == field_paths(BackfillConfig)


def test_no_flags_means_the_configs_own_defaults():
    assert parse() == BackfillConfig(input="/data", output="/out")


def test_flags_land_in_the_fields_they_name():
    config = parse(
        "--model",
        "resnet152",
        "--weights",
        "random",
        "--task",
        "embed",
        "--batch-size",
        "8",
        "--compile",
        "--cpu-threads",
        "3",
        "--no-channels-last",
        "--decode-max-pixels",
        "1000",
        "--decode-formats",
        "png,jpeg",
        "--options",
        '{"zero_init_residual": true}',
        "--actors",
        "2",
        "--rows-per-file",
        "7",
        "--no-progress",
        "--extensions",
        "jpg,png",
        "--s3-endpoint",
        "127.0.0.1:9000",
        "--s3-region",
        "eu-west-1",
    )
    assert (config.model.name, config.model.weights, config.model.task) == ("resnet152", "random", "embed")
    assert config.batch_size == 8 and config.model.compile is True and config.model.cpu_threads == 3
    assert config.model.channels_last is False and config.model.decode.max_pixels == 1000
    assert config.model.decode.formats == ("PNG", "JPEG") and config.model.options == {"zero_init_residual": True}
    assert config.actor_pool_size == 2 and config.min_rows_per_file == 7 and config.progress is False
    assert config.extensions == ("jpg", "png")
    assert (config.s3.endpoint_override, config.s3.region) == ("127.0.0.1:9000", "eu-west-1")


@pytest.mark.parametrize(
    "flag, expected",
    [([], "auto"), (["--compile"], True), (["--compile", "off"], False), (["--compile", "auto"], "auto")],
)
def test_a_setting_that_can_be_auto_takes_auto_on_and_off(flag, expected):
    assert parse(*flag).model.compile == expected


def test_a_bad_value_is_refused_by_the_parser():
    with pytest.raises(SystemExit):
        build_parser().parse_args([*BASE, "--batch-size", "many"])
    with pytest.raises(SystemExit):  # --output is required
        cli.config_from_args(build_parser().parse_args(["backfill", "--input", "/in"]))
    with pytest.raises(ValueError, match="give input .* or input_manifest"):  # one of the two is
        cli.config_from_args(build_parser().parse_args(["backfill", "--output", "/out"]))


def test_model_flags_override_the_model_config_file_key_by_key(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "efficientnet_lite0", "weights": "random", "decode": {"max_pixels": 500, "draft": False}}
        )
    )
    config = parse("--model-config", str(path), "--decode-max-pixels", "900")
    assert (
        config.model.weights == "random"
        and config.model.decode.max_pixels == 900
        and config.model.decode.draft is False
    )


def test_help_shows_each_fields_description_and_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["backfill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for description in (BackfillConfig.model_fields["top_k"].description, "(default: 5)", "(default: auto)"):
        assert " ".join(description.split()) in text
