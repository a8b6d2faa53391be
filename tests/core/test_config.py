"""CompacterConfig: presets, overrides, validation, JSON round trip."""

import dataclasses

import pytest

from compacter import DEFAULT_LEARNING_RATES, METHODS, CompacterConfig
from compacter.config import PRESETS


@pytest.mark.parametrize("method", METHODS)
def test_every_preset_round_trips_through_json(method):
    config = CompacterConfig(method)
    assert CompacterConfig.from_json(config.to_json()) == config
    assert config.learning_rate == DEFAULT_LEARNING_RATES[method]
    for key, value in PRESETS[method].items():
        assert getattr(config, key) == value


@pytest.mark.parametrize("method,changes", [("adapterdrop", dict(drop_first_layers=0)), ("adapterdrop", dict(drop_first_layers=2)),
                                            ("adapter", dict(drop_first_layers=3))])
def test_a_field_set_away_from_its_preset_round_trips(method, changes):
    # drop_first_layers is left out of the JSON at 0 (older readers refuse it), but adapterdrop's preset
    # is 5: its 0 must be written, or the saved adapter reads back with 5 and no longer loads
    config = CompacterConfig(method, **changes)
    assert CompacterConfig.from_json(config.to_json()) == config
    assert config.replace(reduction_factor=8).drop_first_layers == config.drop_first_layers
    assert "drop_first_layers" not in CompacterConfig("adapter").to_dict()  # still omitted where reading restores it


def test_paper_defaults():
    c = CompacterConfig("compacter")
    assert (c.phm_dim, c.phm_rank, c.factorized_phm, c.shared_phm_rule, c.phm_init_range) == (4, 1, True, True, 1e-4)
    assert (c.reduction_factor, c.non_linearity, c.phm_init, c.train_layer_norms) == (32, "gelu_new", "glorot-uniform", True)
    assert c.after_attention and c.after_ffn
    assert not CompacterConfig("compacter++").after_attention
    p = CompacterConfig("phm-adapter")
    assert (p.phm_dim, p.factorized_phm, p.shared_phm_rule, p.phm_init_range) == (12, False, False, 0.01)
    assert CompacterConfig("compacter").learning_rate == 3e-3 and CompacterConfig("adapter").learning_rate == 3e-4


def test_overrides_and_replace():
    c = CompacterConfig("compacter", phm_dim=8, reduction_factor=16, attention_modules=["a"], ffn_modules="b")
    assert c.phm_dim == 8 and c.attention_modules == ("a",) and c.ffn_modules == ("b",)
    d = c.replace(phm_rank=2)
    assert d.phm_rank == 2 and d.phm_dim == 8 and c.phm_rank == 1
    assert c.bottleneck(768) == 48 and CompacterConfig(bottleneck_dim=10).bottleneck(768) == 10


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CompacterConfig().phm_dim = 8


def test_all_problems_are_reported_at_once():
    with pytest.raises(ValueError) as err:
        CompacterConfig("compacter", phm_dim=0, non_linearity="elu", phm_init="xavier", learn_phm="yes", colour=1,
                        phm_init_range=-1.0, after_attention=False, after_ffn=False)
    msg = str(err.value)
    for needle in ("colour", "phm_dim", "non_linearity", "phm_init=", "learn_phm", "phm_init_range", "after_attention or after_ffn"):
        assert needle in msg


def test_unknown_method_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="compacter\\+\\+"):
        CompacterConfig("lora")


@pytest.mark.parametrize("bad", [dict(phm_dim=1), dict(bottleneck_dim=0), dict(phm_rule_init="zeros"), dict(adapter_type="mlp"),
                                 dict(head_modules=[""]), dict(head_modules=5), dict(head_modules=None), dict(ffn_modules={"a": 1}), dict(reduction_factor=2.5),
                                 dict(adapter_init_std=0), dict(phm_init_range=float("inf")), dict(adapter_init_std=float("nan")),
                                 dict(ffn_modules=["(unclosed"]), dict(attention_modules=["a", "*"]), dict(train_all=True),
                                 dict(drop_first_layers=-1), dict(drop_first_layers=True), dict(drop_first_layers=1.5)])
def test_bad_values(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        CompacterConfig("compacter", **bad)


def test_train_all_only_without_adapters():
    assert CompacterConfig("full").train_all
    with pytest.raises(ValueError, match="train_all=True .*adapter_type='phm'"):
        CompacterConfig("compacter++", train_all=True)


def test_a_bad_placement_regex_is_named():
    with pytest.raises(ValueError, match=r"ffn_modules\[1\] '\(x' is not a valid regular expression"):
        CompacterConfig(ffn_modules=["ok", "(x"])


def test_replace_cannot_relabel_the_method():
    with pytest.raises(ValueError, match="cannot change the method"):
        CompacterConfig("compacter++").replace(method="compacter")
    assert CompacterConfig("compacter++").replace(method="compacter++", phm_dim=8).phm_dim == 8


def test_from_dict_rejects_unknown_fields():
    data = CompacterConfig().to_dict()
    data["phm_dims"] = 4
    with pytest.raises(ValueError, match="phm_dims"):
        CompacterConfig.from_dict(data)


def test_head_modules_none_is_refused_but_placement_none_is_the_methods():
    """head_modules=None passed validation and crashed later with a bare TypeError (add_adapters,
    load_adapters, `compacter params`); no head modules is an empty list."""
    with pytest.raises(ValueError, match=r"head_modules must be a list of non-empty strings \(an empty list for none\), got None"):
        CompacterConfig("compacter", head_modules=None)
    assert CompacterConfig("compacter", head_modules=[]).head_modules == ()
    assert CompacterConfig("compacter", attention_modules=None, ffn_modules=None).ffn_modules is None


def test_fields_added_after_format_1_are_written_only_when_set():
    """A config that does not use drop_first_layers is written as the versions before it wrote it
    (they refuse unknown fields), and reads back the same."""
    plain = CompacterConfig("compacter++")
    assert "drop_first_layers" not in plain.to_dict()
    assert CompacterConfig.from_dict(plain.to_dict()) == plain
    drop = CompacterConfig("adapterdrop")
    assert drop.to_dict()["drop_first_layers"] == 5 and CompacterConfig.from_dict(drop.to_dict()) == drop
    assert CompacterConfig.from_dict(CompacterConfig("adapter", drop_first_layers=2).to_dict()).drop_first_layers == 2
