import math

import pytest
import yaml

from sniper.config import Config, load_config, save_config, to_dict
from sniper.scales import Scale, parse_scale


def test_paper_defaults():
    cfg = Config()
    s = cfg.chips.scales
    assert [x.factor for x in s[:2]] == [3.0, 1.667] and s[2].longest == 512
    assert [x.valid_range for x in s] == [(None, 80.0), (32.0, 150.0), (120.0, None)]
    t = cfg.infer.scales
    assert [(x.short, x.max_size) for x in t] == [(1400, 2000), (800, 1280), (480, 512)]
    assert [x.valid_range for x in t] == [(None, 90.0), (32.0, 180.0), (75.0, None)]
    assert cfg.chips.chip_size == 512 and cfg.chips.stride == 32


def test_scale_factors():
    assert Scale(factor=3.0).resize_factor(640, 480) == 3.0
    assert Scale(longest=512).resize_factor(1024, 300) == 0.5
    # short side rule, capped by the long side
    assert Scale(short=800, max_size=1333).resize_factor(600, 400) == 2.0
    assert math.isclose(Scale(short=800, max_size=1333).resize_factor(2000, 500), 1333 / 2000)


def test_scale_in_range_is_half_open():
    s = Scale(factor=1.0, valid_range=(32, 150))
    assert s.in_range([31.9, 32, 149.9, 150]).tolist() == [False, True, True, False]


def test_parse_scale_open_ends():
    assert parse_scale({"factor": 2, "range": [-1, 80]}).valid_range == (None, 80.0)
    assert parse_scale({"longest": 512, "range": [120, None]}).valid_range == (120.0, None)
    with pytest.raises(ValueError, match="exactly one"):
        parse_scale({"factor": 2, "longest": 512})
    with pytest.raises(ValueError, match="unknown scale keys"):
        parse_scale({"factr": 2})


def test_yaml_round_trip_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"lr": 0.02}, "chips": {"scales": [{"factor": 2.0, "range": [0, 100]}]}}))
    cfg = load_config(p, ["train.batch_size=4", "model.backbone=resnet50", "chips.random_stride=[56, 59]"])
    assert cfg.train.lr == 0.02 and cfg.train.batch_size == 4 and cfg.model.backbone == "resnet50"
    assert cfg.chips.random_stride == [56, 59]
    assert len(cfg.chips.scales) == 1 and cfg.chips.scales[0].factor == 2.0
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown key"),
        ("train.lr=abc", "expected a number"),
        ("train.amp=3", "true/false"),
        ("nokey", "key=value"),
        ("trainx.lr=1", "not a config section"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_unknown_yaml_key_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(p)
