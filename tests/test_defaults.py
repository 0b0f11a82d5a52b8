"""One source per default: the config schema's defaults are the settings dataclasses' and the
command line's, and the lists of choices (methods, selections, unit kinds, ...) are the code's."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from srprune.cli import build_parser
from srprune.export import FORMATS
from srprune.pruning.adapter import KINDS, UNIT_KINDS_DEFAULT
from srprune.pruning.calibration import SCORE_CROP_SIZE, SCORE_CROPS, Calibration
from srprune.pruning.compensate import TARGETS, CompensationSettings
from srprune.pruning.importance import OptinSettings
from srprune.pruning.methods import METHODS
from srprune.pruning.methods import SCORERS
from srprune.pruning.selection import DEFAULT_SELECTION, SELECTIONS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
PRUNE = SCHEMA["properties"]["prune"]["properties"]


def section(*path: str) -> dict:
    """The ``properties`` of a nested schema section, e.g. ``section("prune", "optin")``."""
    node = SCHEMA
    for key in path:
        node = node["properties"][key]
    return node["properties"]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


SCORE = ("score-units", "--teacher", "t", "--out", "o")
SEARCH = ("search-masks", "--teacher", "t", "--scores", "s", "--mac-constraint", "0.5",
          "--out", "o")


@pytest.mark.parametrize("settings, path, argv", [
    (OptinSettings, ("prune", "optin"), SCORE),
    (CompensationSettings, ("prune", "compensation"), SEARCH),
    (Calibration, ("prune", "calibration"), SEARCH),
])
def test_schema_defaults_are_the_settings_defaults(settings, path, argv):
    schema, args, defaults = section(*path), parse(*argv), settings()
    option = {"hr": "calib_hr", "lr": "calib_lr"}
    for field in fields(settings):
        value = getattr(defaults, field.name)
        assert getattr(args, option.get(field.name, field.name)) == value, field.name
        if "default" in schema.get(field.name, {}):
            assert schema[field.name]["default"] == value, field.name
    assert set(schema) - {"num_crops", "crop_size"} <= {f.name for f in fields(settings)}


def test_scoring_uses_its_own_smaller_crops():
    """score-units samples SCORE_CROPS crops of SCORE_CROP_SIZE (prune.optin), the other stages
    prune.calibration's."""
    schema, score, search = section("prune", "optin"), parse(*SCORE), parse(*SEARCH)
    assert schema["num_crops"]["default"] == score.num_crops == SCORE_CROPS < search.num_crops
    assert schema["crop_size"]["default"] == score.crop_size == SCORE_CROP_SIZE < search.crop_size


def test_optin_lambda_is_the_measured_one():
    assert OptinSettings().lam == 0.3  # measured on the validation split (importance docstring)


def test_search_and_scoring_defaults_and_choices():
    search, score = parse(*SEARCH), parse(*SCORE)
    assert PRUNE["selection"]["default"] == search.selection == DEFAULT_SELECTION == "compensated"
    assert PRUNE["selection"]["enum"] == list(SELECTIONS)
    assert PRUNE["min_keep"]["default"] == search.min_keep
    assert PRUNE["search_steps"]["default"] == search.search_steps
    assert PRUNE["methods"]["items"]["enum"] == list(METHODS)
    assert PRUNE["methods"]["default"] == [score.method]
    assert set(PRUNE["units"]["items"]["enum"]) == set(KINDS)
    assert PRUNE["units"]["default"] == list(UNIT_KINDS_DEFAULT) == score.units.split(",")
    assert section("prune", "optin")["scorer"]["enum"] == list(SCORERS)
    assert section("prune", "compensation")["target"]["enum"] == list(TARGETS)


def test_evaluation_latency_and_export_defaults():
    evaluate = section("evaluate")
    args = parse("evaluate", "--model", "m", "--scale", "2")
    assert evaluate["tile_overlap"]["default"] == args.tile_overlap
    assert evaluate["device"]["default"] == args.device
    latency = section("latency")
    timed = parse("time-models", "--teacher", "t")
    assert (latency["rounds"]["default"], latency["warmup"]["default"]) == (timed.rounds,
                                                                            timed.warmup)
    assert latency["device"]["default"] == timed.device
    assert set(section("export")["formats"]["items"]["enum"]) == {*FORMATS}
