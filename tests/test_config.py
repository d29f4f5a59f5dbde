import pytest
import yaml

from sam_histo.config import Config, ConfigError, load_config, save_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_yaml_differences(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  epochs: 3\nmodel:\n  image_size: 256\n"))
    assert cfg.train.epochs == 3 and cfg.model.image_size == 256
    assert cfg.train.batch_size == Config().train.batch_size  # untouched default


def test_dotted_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(
        write(tmp_path, "name: x\n"),
        ["train.epochs=7", "data.classes=[a, b]", "sampling.rates={a: 5}",
         "train.phases=[{start_epoch: 0, lr: 0.001}, {start_epoch: 2, stages: [2, 3], lr: 0.0001}]"],
    )
    assert cfg.train.epochs == 7
    assert cfg.data.classes == ["a", "b"]
    assert cfg.sampling.rates == {"a": 5.0}
    assert cfg.train.phases[1].stages == [2, 3] and cfg.train.phases[1].start_epoch == 2


def test_unknown_key_names_key_and_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*did you mean 'epochs'"):
        load_config(write(tmp_path, "train:\n  epoch: 3\n"))
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'.*'model'"):
        load_config(None, ["modle.arch=x"])


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer, got 'ten'"):
        load_config(None, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match=r"model.mode: 'semantik' is not one of .*did you mean 'semantic'"):
        load_config(None, ["model.mode=semantik"])
    with pytest.raises(ConfigError, match=r"train.batch_size: expected an integer, got True"):
        load_config(None, ["train.batch_size=true"])


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="model.image_size=100 must be a multiple of 32"):
        load_config(None, ["model.image_size=100"])
    with pytest.raises(ConfigError, match="start_epoch values \\[0, 0\\]"):
        load_config(None, ["train.phases=[{start_epoch: 0}, {start_epoch: 0}]"])
    with pytest.raises(ConfigError, match="'blood_vesel' which is not in data.classes.*'blood_vessel'"):
        load_config(None, ["data.classes=[tumor, blood_vessel]", "sampling.rates={blood_vesel: 5}"])
    with pytest.raises(ConfigError, match="stain.method=macenko needs stain.reference"):
        load_config(None, ["stain.method=macenko"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(None, ["train.epochs"])


def test_missing_config_file_names_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=5", "data.classes=[a, b]"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(out)
    assert again == cfg
    assert yaml.safe_load(out.read_text())["train"]["epochs"] == 5


def test_exponent_without_dot_is_a_number():
    # YAML 1.1 reads "3e-4" as a string; a float field still takes it
    cfg = load_config(None, ["train.phases=[{start_epoch: 0, lr: 3e-4, min_lr: 1e-6}]"])
    assert cfg.train.phases[0].lr == 3e-4 and cfg.train.phases[0].min_lr == 1e-6
    with pytest.raises(ConfigError, match="expected a number, got '3e-x'"):
        load_config(None, ["train.phases=[{start_epoch: 0, lr: 3e-x}]"])


def test_yaml_boolean_words_keep_their_word_in_a_choice():
    # PyYAML reads "no" as False; train.mixed_precision=no must still mean the option "no"
    cfg = load_config(None, ["train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="train.mixed_precision: True is not one of"):
        load_config(None, ["train.mixed_precision=yes"])
