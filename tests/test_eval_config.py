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


def test_multi_scale_and_region_clean_up_rules():
    cfg = load_config(None, ["eval.tta_scales=[0.8, 1.0, 1.25]", "eval.min_region_um2=5", "model.target_mpp=0.25"])
    assert cfg.eval.tta_scales == [0.8, 1.0, 1.25] and cfg.eval.min_region_um2 == 5
    assert load_config(None, ["eval.min_region_um2=5", "data.mpp=0.5"]).eval.min_region_um2 == 5
    for scales in ("[]", "[0.1, 1.0]", "[1.0, 1.0]", "[1.0, 8]"):
        with pytest.raises(ConfigError, match=r"eval.tta_scales=.* must list distinct relative scales in \[0.25, 4\]"):
            load_config(None, [f"eval.tta_scales={scales}"])
    with pytest.raises(ConfigError, match=r"eval.min_region_um2=-1.0 must be square microns"):
        load_config(None, ["eval.min_region_um2=-1", "model.target_mpp=0.25"])
    with pytest.raises(ConfigError, match=r"eval.min_region_um2=5.0 needs microns per pixel .*: set "
                                          r"model.target_mpp or data.mpp, or eval.min_region_um2=0"):
        load_config(None, ["eval.min_region_um2=5"])
    with pytest.raises(ConfigError, match=r"apply to semantic mode only"):
        load_config(None, ["model.mode=prompted", "eval.tta_scales=[0.9, 1.0]"])
