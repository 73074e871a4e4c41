import re

import pytest

import lrt
from helpers import tiny_config


def test_defaults_resolve_source_layer_to_upper_middle():
    assert lrt.LRTConfig(n_layer=12).source_layer == 8
    assert lrt.LRTConfig(n_layer=20, n_head=10, n_kv_head=10, n_embd=1280).source_layer == 13
    assert lrt.LRTConfig(n_layer=1, n_head=1, n_kv_head=1, n_embd=64).source_layer == 1


def test_json_round_trip():
    cfg = tiny_config(target_layers=(3, 1), injection="kv", projection="layerwise")
    back = lrt.LRTConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.target_layers == (1, 3)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown LRTConfig field.*n_layers"):
        lrt.LRTConfig.from_dict({**tiny_config().to_dict(), "n_layers": 3})


def test_from_depth_follows_the_depth_knob():
    cfg = lrt.LRTConfig.from_depth(20)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim) == (20, 1280, 10, 128)
    small = lrt.LRTConfig.from_depth(3, head_dim=64)
    assert (small.n_embd, small.n_head) == (192, 3)


def test_windows_tile_the_pattern_and_keep_the_last_layer_full():
    cfg = tiny_config(n_layer=4, window_pattern="sl", short_window=None)
    assert [cfg.window(l) for l in range(4)] == [4, None, 4, None]
    cfg = tiny_config(n_layer=3, window_pattern="S", short_window=2)
    assert [cfg.window(l) for l in range(3)] == [2, 2, None]


@pytest.mark.parametrize(
    "overrides, field, allowed",
    [
        (dict(source_layer=0), "source_layer", "1..3"),
        (dict(source_layer=4), "source_layer", "1..3"),
        (dict(n_head=5), "n_head", "divisor of n_embd=32"),
        (dict(n_kv_head=3), "n_kv_head", "divisor of n_head=4"),
        (dict(injection="kv+res"), "injection", "kv\\+residual"),
        (dict(projection="per-layer"), "projection", "layerwise"),
        (dict(target_layers=(0, 2)), "target_layers", "1..3"),
        (dict(target_layers=()), "target_layers", "1..3"),
        (dict(target_layers=(2, 2)), "target_layers", "distinct"),
        (dict(value_embeds="some"), "value_embeds", "alternating"),
        (dict(window_pattern="SXL"), "window_pattern", "'S' and 'L'"),
        (dict(n_layer=0), "n_layer", "positive integer"),
        (dict(gate_channels=64), "gate_channels", "at most n_embd=32"),
    ],
)
def test_bad_configs_name_the_field_and_allowed_values(overrides, field, allowed):
    with pytest.raises(ValueError, match=field) as info:
        tiny_config(**overrides)
    assert re.search(allowed, str(info.value))
