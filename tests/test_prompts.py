"""Class-prompt files: the shipped MRSpineSeg file, templates, selection precedence and validation errors."""
import json
from importlib import resources

import pytest

from nnunet_cps4.data.layout import MRSPINESEG_LABELS
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.prompts import (DEFAULT_PROMPT_TEMPLATES, PROMPT_FORMAT, PROMPTS_ENV, ClassPrompts,
                                 SpineOrder, load_class_prompts, load_prompt_file, shipped_prompt_files,
                                 template_prompts)

FG = sorted(((n, i) for n, i in MRSPINESEG_LABELS.items() if i != 0), key=lambda x: x[1])
SMALL = {"labels": {"background": 0, "L4": 2, "L5": 1, "L4/L5": 3}}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(PROMPTS_ENV, raising=False)


def _write(path, classes, fmt=PROMPT_FORMAT):
    path.write_text(json.dumps({"format": fmt, "description": "test", "classes": classes}))
    return path


def _small_file(path):
    return _write(path, {"L5": ["fifth lumbar vertebra"], "L4": ["fourth lumbar vertebra", "L4"],
                         "L4/L5": ["disc between L4 and L5"]})


# ---------------------------------------------------------------- shipped file
def test_shipped_file_is_a_package_resource():
    res = resources.files("nnunet_cps4.text_prompts") / "mrspineseg.json"
    assert res.is_file()
    assert json.loads(res.read_text(encoding="utf-8"))["format"] == PROMPT_FORMAT
    assert "mrspineseg" in shipped_prompt_files()


@pytest.mark.parametrize("name", ["mrspineseg", "mrspineseg.json"])
def test_shipped_mrspineseg_covers_all_labels(name):
    cp = load_class_prompts({"labels": dict(MRSPINESEG_LABELS), "cps4": {"prompt_file": name}})
    assert cp.class_names == [n for n, _ in FG]
    assert cp.label_ids == list(range(1, 20))
    assert cp.source.endswith("mrspineseg.json")
    for name_ in cp.class_names:
        assert 2 <= len(cp.prompts[name_]) <= 3
        assert all(isinstance(p, str) and p.strip() for p in cp.prompts[name_])
    assert "sacrum (S)" in cp.prompts["S"]
    assert "fifth lumbar vertebra (L5)" in cp.prompts["L5"]
    assert "twelfth thoracic vertebra (T12)" in cp.prompts["T12"]
    assert "intervertebral disc between L5 and the sacrum" in cp.prompts["L5/S"]
    assert "intervertebral disc between T9 and T10" in cp.prompts["T9/T10"]


def test_fingerprint_and_dict_roundtrip():
    cp = load_class_prompts({"labels": dict(MRSPINESEG_LABELS), "cps4": {"prompt_file": "mrspineseg"}})
    d = json.loads(json.dumps(cp.to_dict()))
    back = ClassPrompts.from_dict(d)
    assert back == cp and d["fingerprint"] == cp.fingerprint() == back.fingerprint()
    assert len(cp.fingerprint()) == 64
    other = ClassPrompts(cp.class_names, cp.label_ids, {**cp.prompts, "S": ["sacrum"]}, cp.source)
    assert other.fingerprint() != cp.fingerprint()
    moved = ClassPrompts(cp.class_names, cp.label_ids, cp.prompts, "/elsewhere/mrspineseg.json")
    assert moved.fingerprint() == cp.fingerprint()


# ---------------------------------------------------------------- template
def test_template_default():
    dj = {"labels": {"background": 0, "left_kidney": 2, "liver": 1, "ignore": 3}}
    cp = load_class_prompts(dj)
    assert cp.source == "template" and cp.templates == list(DEFAULT_PROMPT_TEMPLATES)
    assert cp.class_names == ["liver", "left_kidney"] and cp.label_ids == [1, 2]
    assert cp.prompts["left_kidney"] == [t.replace("{name}", "left kidney") for t in DEFAULT_PROMPT_TEMPLATES]
    assert "ignore" not in cp.prompts and "background" not in cp.prompts


def test_template_from_dataset_json_and_bad_template():
    dj = {**SMALL, "cps4": {"prompt_templates": ["a sagittal T2 MR image of the {name}"]}}
    assert template_prompts(dj).prompts["L4"] == ["a sagittal T2 MR image of the L4"]
    with pytest.raises(CPS4Error, match=r"prompt_templates.*\{name\}"):
        template_prompts({**SMALL, "cps4": {"prompt_templates": ["no placeholder"]}})


def test_regions_rejected():
    dj = {"labels": {"background": 0, "whole": [1, 2], "core": [2]}, "regions_class_order": [1, 2]}
    with pytest.raises(CPS4Error, match="region"):
        load_class_prompts(dj)


# ---------------------------------------------------------------- selection precedence
def test_dataset_json_relative_path_and_absolute_path(tmp_path):
    raw = tmp_path / "Dataset001_X"
    raw.mkdir()
    f = _small_file(raw / "my_prompts.json")
    cp = load_class_prompts({**SMALL, "cps4": {"prompt_file": "my_prompts.json"}}, str(raw))
    assert cp.source == str(f) and cp.class_names == ["L5", "L4", "L4/L5"]
    assert load_class_prompts({**SMALL, "cps4": {"prompt_file": str(f)}}).source == str(f)


def test_env_var_wins_over_dataset_json(tmp_path, monkeypatch):
    f = _small_file(tmp_path / "env.json")
    dj = {"labels": dict(MRSPINESEG_LABELS), "cps4": {"prompt_file": "mrspineseg"}}
    monkeypatch.setenv(PROMPTS_ENV, "template")
    assert load_class_prompts(dj).source == "template"
    monkeypatch.setenv(PROMPTS_ENV, str(f))
    assert load_class_prompts({**SMALL, "cps4": {"prompt_file": "missing.json"}}).source == str(f)
    monkeypatch.setenv(PROMPTS_ENV, "mrspineseg")
    assert load_class_prompts({"labels": dict(MRSPINESEG_LABELS)}).source.endswith("mrspineseg.json")


def test_bare_shipped_name_beats_dataset_file_but_dot_slash_does_not(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    local = _write(raw / "mrspineseg.json", {n: [f"custom {n}"] for n, _ in FG})
    dj = {"labels": dict(MRSPINESEG_LABELS), "cps4": {"prompt_file": "mrspineseg.json"}}
    assert load_class_prompts(dj, str(raw)).source != str(local)
    dj["cps4"]["prompt_file"] = "./mrspineseg.json"
    cp = load_class_prompts(dj, str(raw))
    assert cp.source == str(local) and cp.prompts["S"] == ["custom S"]


# ---------------------------------------------------------------- validation errors
def test_missing_and_unknown_classes_listed_together(tmp_path):
    f = _write(tmp_path / "p.json", {"L4": ["x"], "L3": ["y"], "background": ["z"]})
    with pytest.raises(CPS4Error) as e:
        load_prompt_file(f, SMALL)
    msg = str(e.value)
    assert str(f) in msg
    for name in ("'L5'", "'L4/L5'", "'L3'", "'background'"):
        assert name in msg
    assert "no prompts for dataset classes" in msg and "not in dataset.json labels" in msg


@pytest.mark.parametrize("text, expected", [
    ('{"format": "cps4-class-prompts/1", "classes": {', "not valid JSON"),
    ('{"format": "other/2", "classes": {"L4": ["x"]}}', "format tag 'other/2'"),
    ('{"classes": {"L4": ["x"]}}', "no 'format' tag"),
    ('["L4"]', "top level must be a JSON object"),
    ('{"format": "cps4-class-prompts/1", "classes": {}}', "'classes' must be a non-empty object"),
])
def test_structural_errors_name_file_and_problem(tmp_path, text, expected):
    f = tmp_path / "bad.json"
    f.write_text(text)
    with pytest.raises(CPS4Error) as e:
        load_prompt_file(f, SMALL)
    assert str(f) in str(e.value) and expected in str(e.value)


@pytest.mark.parametrize("entry, expected", [
    ([], "class 'L4': empty prompt list"),
    (["ok", 3], "class 'L4': prompt 1 is a int"),
    (["  "], "class 'L4': prompt 0 is an empty string"),
    ("fourth lumbar vertebra", "class 'L4': prompts must be a list of strings"),
])
def test_entry_errors(tmp_path, entry, expected):
    f = _write(tmp_path / "bad.json", {"L5": ["a"], "L4": entry, "L4/L5": ["b"]})
    with pytest.raises(CPS4Error) as e:
        load_prompt_file(f, SMALL)
    assert str(f) in str(e.value) and expected in str(e.value)


def test_missing_file_names_what_and_where(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(CPS4Error) as e:
        load_class_prompts({**SMALL, "cps4": {"prompt_file": "nope.json"}}, str(raw))
    msg = str(e.value)
    assert "'nope.json'" in msg and "cps4.prompt_file" in msg and str(raw / "nope.json") in msg
    assert "mrspineseg" in msg
    monkeypatch.setenv(PROMPTS_ENV, "/does/not/exist.json")
    with pytest.raises(CPS4Error, match=f"{PROMPTS_ENV}.*/does/not/exist.json"):
        load_class_prompts(SMALL, str(raw))


# ---------------------------------------------------------------- spine order
MRSPINESEG_SEQUENCE = ("S", "L5/S", "L5", "L4/L5", "L4", "L3/L4", "L3", "L2/L3", "L2", "L1/L2", "L1", "T12/L1", "T12",
                       "T11/T12", "T11", "T10/T11", "T10", "T9/T10", "T9")
# fingerprint of the shipped MRSpineSeg prompts before "spine_order" was added: checkpoints keep matching
MRSPINESEG_FINGERPRINT = "c13df79eaa1003f0ed7ced2b6ce3daef9df6d6ae7c24cac30131f69e34576613"


def _write_order(path, order):
    path.write_text(json.dumps({"format": PROMPT_FORMAT, "spine_order": order, "classes": {
        "L5": ["fifth lumbar vertebra"], "L4": ["fourth lumbar vertebra"], "L4/L5": ["disc between L4 and L5"]}}))
    return path


def test_shipped_mrspineseg_spine_order():
    cp = load_class_prompts({"labels": dict(MRSPINESEG_LABELS), "cps4": {"prompt_file": "mrspineseg"}})
    assert cp.spine_order == SpineOrder(MRSPINESEG_SEQUENCE, MRSPINESEG_SEQUENCE[1::2], "S")
    assert set(cp.spine_order.sequence) == set(cp.class_names)
    res = resources.files("nnunet_cps4.text_prompts") / "mrspineseg.json"
    assert "nnunet_cps4.data.layout.MRSPINESEG_LABELS" in json.loads(res.read_text(encoding="utf-8"))["description"]


def test_spine_order_is_not_part_of_the_fingerprint_but_of_the_dict():
    cp = load_class_prompts({"labels": dict(MRSPINESEG_LABELS), "cps4": {"prompt_file": "mrspineseg"}})
    assert cp.fingerprint() == MRSPINESEG_FINGERPRINT
    plain = ClassPrompts(cp.class_names, cp.label_ids, cp.prompts, cp.source)
    assert plain.spine_order is None and plain.fingerprint() == cp.fingerprint()
    d = json.loads(json.dumps(cp.to_dict()))
    assert d["spine_order"] == {"sequence": list(MRSPINESEG_SEQUENCE), "discs": list(MRSPINESEG_SEQUENCE[1::2]),
                                "anchor": "S"}
    assert ClassPrompts.from_dict(d) == cp and ClassPrompts.from_dict(d).spine_order == cp.spine_order
    assert "spine_order" not in plain.to_dict() and ClassPrompts.from_dict(plain.to_dict()) == plain


def test_spine_order_optional(tmp_path):
    assert load_prompt_file(_small_file(tmp_path / "p.json"), SMALL).spine_order is None
    assert load_prompt_file(_write_order(tmp_path / "n.json", None), SMALL).spine_order is None
    assert template_prompts({"labels": dict(MRSPINESEG_LABELS)}).spine_order is None
    order = {"sequence": ["L5", "L4/L5", "L4"], "discs": ["L4/L5"]}
    assert load_prompt_file(_write_order(tmp_path / "o.json", order), SMALL).spine_order == \
        SpineOrder(("L5", "L4/L5", "L4"), ("L4/L5",), None)


@pytest.mark.parametrize("order, expected", [
    ({"sequence": ["L5", "L4", "L4/L5"], "discs": ["L4/L5"]}, "must alternate, but two of a kind follow each "
                                                              "other: 'L5' -> 'L4'"),
    ({"sequence": ["L5", "L4/L5", "L3"], "discs": ["L4/L5"]}, "not dataset.json foreground labels: ['L3']"),
    ({"sequence": ["L5", "L4/L5", "L4"], "discs": ["L4/L5"], "anchor": "S"}, "'anchor' 'S' is not in 'sequence'"),
    ({"sequence": ["L5", "L4/L5", "L5"], "discs": ["L4/L5"]}, "listed twice in 'sequence': ['L5']"),
    ({"sequence": ["L5", "L4/L5"], "discs": ["L4/L5", "L4"]}, "every name in 'discs' must also be in 'sequence'"),
    ({"sequence": ["L5", "L4/L5", "L4"], "discs": ["L4/L5"], "anchors": "L5"}, "unknown keys ['anchors']"),
    ({"sequence": "L5 L4/L5 L4", "discs": ["L4/L5"]}, "'sequence' and 'discs' must be lists of class names"),
    ({"sequence": ["L5"], "discs": []}, "'sequence' needs at least two classes"),
    (["L5", "L4/L5", "L4"], "must be an object, got list"),
])
def test_spine_order_errors_name_file_and_fix(tmp_path, order, expected):
    f = _write_order(tmp_path / "bad.json", order)
    with pytest.raises(CPS4Error) as e:
        load_prompt_file(f, SMALL)
    msg = str(e.value)
    assert str(f) in msg and "'spine_order'" in msg and expected in msg and "Fix:" in msg, msg


def test_prompt_setting_changed_in_raw_dataset_json_after_planning_is_an_error(tmp_path, monkeypatch):
    """Training reads the planned copy of dataset.json; a prompt file set later in the raw one is not silently
    ignored."""
    from nnunet_cps4.method.prompts import load_dataset_prompts

    raw = tmp_path / "raw" / "Dataset123_Spine"
    raw.mkdir(parents=True)
    planned = {"labels": MRSPINESEG_LABELS}
    (raw / "dataset.json").write_text(json.dumps(dict(planned, cps4={"prompt_file": "mrspineseg"})))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    with pytest.raises(CPS4Error) as info:
        load_dataset_prompts(planned, "Dataset123_Spine")
    assert "prompt_file" in str(info.value) and "nnUNet_preprocessed/Dataset123_Spine/dataset.json" in str(info.value)
    # in agreement: the shipped file is used
    assert load_dataset_prompts(dict(planned, cps4={"prompt_file": "mrspineseg"}), "Dataset123_Spine").source \
        .endswith("mrspineseg.json")
