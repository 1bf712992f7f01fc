import math

import pytest
import yaml

from sniper.config import Config, load_config, resolve_config_path, save_config, shipped_configs, to_dict
from sniper.errors import SniperError
from sniper.scales import Scale, parse_scale

SHIPPED = ("cpu_small", "paper_mobilenet_v2", "paper_resnet101")


def test_paper_defaults():
    cfg = Config()
    assert cfg.model.pretrained  # ImageNet init unless asked otherwise
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


def test_shipped_configs_live_in_the_package():
    shipped = shipped_configs()
    assert set(SHIPPED) <= set(shipped)
    for name, path in shipped.items():
        assert path.is_file() and path.name == f"{name}.yaml" and path.parent.parent.name == "sniper"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads(name):
    cfg = load_config(name)
    assert to_dict(cfg) == to_dict(load_config(shipped_configs()[name]))
    assert to_dict(cfg) != to_dict(Config())


def test_config_by_name_with_or_without_yaml_suffix():
    path = resolve_config_path("cpu_small")
    assert path == shipped_configs()["cpu_small"] == resolve_config_path("cpu_small.yaml")
    cfg = load_config("cpu_small.yaml", ["train.lr=0.5"])
    assert cfg.chips.chip_size == 256 and cfg.train.lr == 0.5
    assert to_dict(load_config("paper_resnet101")) == to_dict(load_config("paper_resnet101.yaml"))


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(SniperError) as info:
        load_config("paper_resnet1O1")
    message = str(info.value)
    assert "paper_resnet1O1" in message and "\n" not in message
    for name in SHIPPED:
        assert name in message
    # a path-like argument is never looked up among the shipped configs
    with pytest.raises(SniperError, match="cpu_small, "):
        load_config("somewhere/cpu_small.yaml")


def test_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cpu_small.yaml").write_text("train:\n  lr: 0.123\n")
    assert resolve_config_path("cpu_small.yaml").resolve() == (tmp_path / "cpu_small.yaml").resolve()
    assert load_config("cpu_small.yaml").train.lr == 0.123
    # the bare name is no file here, so it is still the shipped config
    assert load_config("cpu_small").chips.chip_size == 256
    p = tmp_path / "sub" / "mine.yaml"
    p.parent.mkdir()
    p.write_text("train:\n  lr: 0.5\n")
    assert load_config(p).train.lr == 0.5 and load_config(str(p)).train.lr == 0.5
