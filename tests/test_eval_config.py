"""The `eval` config section: its cross-field rules name the key and the fix."""
import pytest

from sam_histo.config import ConfigError, load_config


def test_eval_section_rules():
    cfg = load_config(None, ["data.classes=[tumor, stroma, blood_vessel]", "eval.overlay_class=blood_vessel",
                             "eval.instances=true", "eval.overlays=0"])
    assert cfg.eval.overlay_class == "blood_vessel" and cfg.eval.instances and cfg.eval.overlays == 0
    with pytest.raises(ConfigError, match=r"eval.overlay_class='blood_vesel' is not in data.classes.*did you mean "
                                          r"'blood_vessel'"):
        load_config(None, ["data.classes=[tumor, blood_vessel]", "eval.overlay_class=blood_vesel"])
    with pytest.raises(ConfigError, match=r"eval.overlays=-1 must be >= 0"):
        load_config(None, ["eval.overlays=-1"])
    with pytest.raises(ConfigError, match=r"eval.window_overlap=1.0 must be in \[0, 1\)"):
        load_config(None, ["eval.window_overlap=1.0"])
