import json

import pytest

from sam_histo.zeroshot.text_prompts import PROMPTS_DIR, PromptFileError, load_prompts, prompt_file_for

SHIPPED = {
    "bcss": ["tumor", "stroma", "lymphocytic_infiltrate", "necrosis_or_debris", "blood_vessel", "other"],
    "lgg": ["background", "CT", "LE", "IT"],
    "vesicle": ["background", "vesicle"],
}


def write(tmp_path, tree, name="p.json"):
    p = tmp_path / name
    p.write_text(tree if isinstance(tree, str) else json.dumps(tree))
    return p


def minimal():
    return {"templates": ["an image of {}.", "{} seen at 40x."],
            "classes": {"a": {"synonyms": ["alpha", "first"]}, "b": {"synonyms": ["beta"], "templates": ["b: {}"]}}}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_prompt_files_cover_the_config_classes(name):
    prompts = load_prompts(prompt_file_for("", name))
    assert prompts.class_names == SHIPPED[name]
    prompts.check_classes(SHIPPED[name])
    for c in prompts.class_names:
        texts = prompts.texts(c)
        assert len(texts) >= 4 and len(set(texts)) == len(texts)
        assert all("{" not in t for t in texts)
    assert "outside_roi" not in prompts.class_names


def test_texts_are_synonyms_times_templates_with_class_override(tmp_path):
    p = load_prompts(write(tmp_path, minimal()))
    assert p.texts("a") == ["an image of alpha.", "alpha seen at 40x.", "an image of first.", "first seen at 40x."]
    assert p.texts("b") == ["b: beta"]


def test_hash_ignores_formatting_and_follows_wording(tmp_path):
    tree = minimal()
    h1 = load_prompts(write(tmp_path, json.dumps(tree, indent=4), "a.json")).sha256
    reordered = {"classes": tree["classes"], "templates": tree["templates"]}
    h2 = load_prompts(write(tmp_path, json.dumps(reordered, separators=(",", ":")), "b.json")).sha256
    tree["classes"]["a"]["synonyms"][0] = "alpha cells"
    h3 = load_prompts(write(tmp_path, tree, "c.json")).sha256
    assert h1 == h2 and h1 != h3 and len(h1) == 64


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.pop("classes"), r"'classes' must be a non-empty object"),
    (lambda t: t.update(clases={}), r"unknown key 'clases' \(did you mean 'classes'\?\)"),
    (lambda t: t["classes"]["a"].update(synonym=["x"]),
     r"classes.a: unknown key 'synonym' \(did you mean 'synonyms'\?\)"),
    (lambda t: t["classes"]["a"].pop("synonyms"), r"classes.a: missing 'synonyms'"),
    (lambda t: t["classes"]["a"].update(synonyms=[]), r"classes.a.synonyms must be a non-empty list"),
    (lambda t: t["classes"]["a"].update(synonyms=["ok", 3]), r"classes.a.synonyms\[1\] must be a non-empty string"),
    (lambda t: t.update(templates=["no slot"]), r"templates\[0\] = 'no slot' must contain exactly one '\{\}'"),
    (lambda t: t.update(templates=["{} and {}"]), r"exactly one '\{\}'"),
    (lambda t: t.update(templates=["{name} x {}"]), r"no other braces"),
    (lambda t: t["classes"]["a"].update(synonyms=["x", "x"]), r"classes.a.synonyms repeats \['x'\]"),
    (lambda t: t.pop("templates"), r"classes.a: no templates"),
    (lambda t: t["classes"].update(c="just a string"), r"classes.c must be an object"),
])
def test_malformed_files_name_file_and_key(tmp_path, mutate, message):
    tree = minimal()
    mutate(tree)
    path = write(tmp_path, tree)
    with pytest.raises(PromptFileError, match=message) as err:
        load_prompts(path)
    assert str(path) in str(err.value)


def test_not_json_missing_file_and_missing_class(tmp_path):
    with pytest.raises(PromptFileError, match=r"p.json: not valid JSON"):
        load_prompts(write(tmp_path, "{'single': quotes}"))
    with pytest.raises(PromptFileError, match=r"nope.json' not found.*bcss.json"):
        load_prompts(tmp_path / "nope.json")
    p = load_prompts(write(tmp_path, minimal()))
    with pytest.raises(PromptFileError, match=r"p.json: no prompts for class\(es\) \['c'\]; the file has \['a', 'b'\]"):
        p.check_classes(["a", "c"])


def test_prompt_file_for_prefers_explicit_path(tmp_path):
    assert prompt_file_for("", "lgg") == PROMPTS_DIR / "lgg.json"
    assert prompt_file_for(str(tmp_path / "x.json"), "lgg") == tmp_path / "x.json"
