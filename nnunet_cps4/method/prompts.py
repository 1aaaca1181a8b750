"""Class prompts: the text that names each foreground class for the CPS4 text encoder.

A prompt file is JSON (format documented in text_prompts/README.md):

```
{"format": "cps4-class-prompts/1",
 "description": "free text",
 "classes": {"L4": ["fourth lumbar vertebra (L4)", "lumbar vertebra 4"],
             "L4/L5": ["intervertebral disc between L4 and L5"]}}
```

Keys under "classes" are the dataset.json label names, exactly; every foreground class (all labels except the
background, value 0, and the "ignore" label) needs one or more prompts, and no other key is allowed. An optional
"spine_order" declares the order of the vertebra and disc classes along the spine (`SpineOrder`), used by
nnunet_cps4.method.spine_order; it is not part of the prompt fingerprint.

Which prompts a dataset gets (`load_class_prompts`), first match wins:

1. the environment variable ``nnUNet_cps4_prompts`` (overrides the dataset for one run, e.g. an ablation);
2. dataset.json ``"cps4": {"prompt_file": ...}``;
3. otherwise prompts built from the label names with the templates (``DEFAULT_PROMPT_TEMPLATES``, or the list
   under dataset.json ``"cps4": {"prompt_templates": [...]}``).

A value is the literal ``template`` (force step 3), the bare name of a prompt file shipped with nnunet-cps4
(``mrspineseg`` or ``mrspineseg.json``), or a path: absolute, or relative to the raw dataset folder when one is
given (else to the current directory). A bare name that matches a shipped file always means the shipped file;
write ``./mrspineseg.json`` for a file of that name in the dataset folder.

Kept import-light (json, hashlib and the standard library only).
"""
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_cps4.errors import CPS4Error

PROMPT_FORMAT = "cps4-class-prompts/1"
PROMPTS_ENV = "nnUNet_cps4_prompts"
CPS4_JSON_KEY = "cps4"  # same key as nnunet_cps4.data.layout.CPS4_JSON_KEY (not imported: that pulls nnunetv2)
PROMPT_FILE_KEY = "prompt_file"
PROMPT_TEMPLATES_KEY = "prompt_templates"
TEMPLATE_SOURCE = "template"
SPINE_ORDER_KEY = "spine_order"
SHIPPED_PACKAGE = "nnunet_cps4.text_prompts"

# Prompts for a dataset without a prompt file: each template with "{name}" replaced by the label name
# (underscores shown as spaces). Modality-neutral on purpose; a dataset sets its own list under
# dataset.json "cps4": {"prompt_templates": ["a sagittal T2 MR image of the {name}"]}.
DEFAULT_PROMPT_TEMPLATES: Tuple[str, ...] = ("{name}", "the {name} in a medical image")


@dataclass(frozen=True)
class SpineOrder:
    """The anatomical order of a dataset's vertebra and disc classes along the spine (prompt-file key "spine_order").

    sequence: class names from caudal to cranial, vertebrae and discs alternating (e.g. "S", "L5/S", "L5", ...).
    discs:    the names in `sequence` that are discs; the others are vertebrae.
    anchor:   the most reliably recognised class, from which levels are counted (e.g. "S"), or None.
    """
    sequence: Tuple[str, ...]
    discs: Tuple[str, ...]
    anchor: Optional[str] = None


@dataclass
class ClassPrompts:
    """Prompts of every foreground class of one dataset, ordered by label id.

    class_names: foreground label names (dataset.json keys) ordered by label id.
    label_ids:   their label values, same order (class_names[i] has value label_ids[i]).
    prompts:     class name -> one or more prompt strings.
    source:      the prompt file's path, or "template".
    spine_order: the file's "spine_order" (`SpineOrder`), or None; not part of the fingerprint.
    """
    class_names: List[str]
    label_ids: List[int]
    prompts: Dict[str, List[str]]
    source: str
    templates: Optional[List[str]] = field(default=None)  # the templates used when source == "template"
    spine_order: Optional[SpineOrder] = field(default=None)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """sha256 of the class names, label ids and prompts (not of `source`): same prompts, same fingerprint.

        Store it in checkpoint metadata to detect that a model is used with other prompts than it was trained with.
        """
        payload = json.dumps({"class_names": list(self.class_names), "label_ids": [int(i) for i in self.label_ids],
                              "prompts": {c: list(self.prompts[c]) for c in self.class_names}},
                             sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict:
        """JSON-serialisable form (for checkpoints and logs); `from_dict` reverses it."""
        d = {"format": PROMPT_FORMAT, "source": self.source, "class_names": list(self.class_names),
             "label_ids": [int(i) for i in self.label_ids],
             "prompts": {c: list(self.prompts[c]) for c in self.class_names}, "fingerprint": self.fingerprint()}
        if self.templates is not None:
            d["templates"] = list(self.templates)
        if self.spine_order is not None:
            o = self.spine_order
            d[SPINE_ORDER_KEY] = {"sequence": list(o.sequence), "discs": list(o.discs), "anchor": o.anchor}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ClassPrompts":
        o = d.get(SPINE_ORDER_KEY)
        return cls(class_names=list(d["class_names"]), label_ids=[int(i) for i in d["label_ids"]],
                   prompts={k: list(v) for k, v in d["prompts"].items()}, source=d["source"],
                   templates=list(d["templates"]) if d.get("templates") is not None else None,
                   spine_order=SpineOrder(tuple(o["sequence"]), tuple(o["discs"]), o.get("anchor")) if o else None)


def foreground_classes(dataset_json: dict) -> List[Tuple[str, int]]:
    """(name, label id) of every foreground class, ordered by id: all labels but background (0) and "ignore"."""
    labels = dataset_json.get("labels") if isinstance(dataset_json, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise CPS4Error("dataset.json has no 'labels' mapping. Fix: add \"labels\": {\"background\": 0, ...} "
                        "as nnU-Net requires")
    if "regions_class_order" in dataset_json or any(isinstance(v, (list, tuple)) for v in labels.values()):
        regions = [k for k, v in labels.items() if isinstance(v, (list, tuple))]
        raise CPS4Error(f"dataset.json defines region-based labels ({', '.join(regions) or 'regions_class_order'}); "
                        f"CPS4 class prompts need one integer label per class and do not support regions. "
                        f"Fix: use plain integer labels")
    out, seen = [], {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
            raise CPS4Error(f"dataset.json label {name!r} has value {value!r}; expected a non-negative integer")
        value = int(value)
        if value == 0 or name == "ignore":
            continue
        if value in seen:
            raise CPS4Error(f"dataset.json labels {seen[value]!r} and {name!r} share the value {value}. "
                            f"Fix: give every class its own label value")
        seen[value] = name
        out.append((name, value))
    if not out:
        raise CPS4Error("dataset.json labels contain no foreground class (only background/ignore)")
    return sorted(out, key=lambda x: x[1])


def _cps4_settings(dataset_json: dict) -> dict:
    cps4 = dataset_json.get(CPS4_JSON_KEY, {}) if isinstance(dataset_json, dict) else {}
    if cps4 is None:
        return {}
    if not isinstance(cps4, dict):
        raise CPS4Error(f"dataset.json key '{CPS4_JSON_KEY}' must be an object, got {type(cps4).__name__}")
    return cps4


def template_prompts(dataset_json: dict, templates: Optional[Sequence[str]] = None) -> ClassPrompts:
    """Prompts from the label names: each template with "{name}" replaced by the name ('_' shown as ' ').

    templates: None -> dataset.json "cps4" -> "prompt_templates" if set, else DEFAULT_PROMPT_TEMPLATES.
    """
    classes = foreground_classes(dataset_json)
    where = "template list"
    if templates is None:
        templates = _cps4_settings(dataset_json).get(PROMPT_TEMPLATES_KEY)
        where = f"dataset.json '{CPS4_JSON_KEY}.{PROMPT_TEMPLATES_KEY}'"
        if templates is None:
            templates = DEFAULT_PROMPT_TEMPLATES
    if isinstance(templates, str) or not isinstance(templates, (list, tuple)) or not templates:
        raise CPS4Error(f"{where} must be a non-empty list of strings containing '{{name}}', got {templates!r}")
    bad = [t for t in templates if not isinstance(t, str) or "{name}" not in t]
    if bad:
        raise CPS4Error(f"{where}: every template must be a string containing '{{name}}'; bad: {bad!r}. "
                        f"Fix: e.g. [\"{{name}}\", \"a sagittal T2 MR image of the {{name}}\"]")
    prompts = {}
    for name, _ in classes:
        shown = " ".join(name.replace("_", " ").split())
        unique = []
        for t in templates:
            p = t.replace("{name}", shown).strip()
            if p not in unique:
                unique.append(p)
        prompts[name] = unique
    return ClassPrompts([n for n, _ in classes], [i for _, i in classes], prompts, TEMPLATE_SOURCE,
                        templates=list(templates))


def _check_prompts(data, source: str, dataset_json: dict) -> ClassPrompts:
    if not isinstance(data, dict):
        raise CPS4Error(f"prompt file {source}: the top level must be a JSON object, got {type(data).__name__}")
    fmt = data.get("format")
    if fmt != PROMPT_FORMAT:
        what = "has no 'format' tag" if fmt is None else f"has format tag {fmt!r}"
        raise CPS4Error(f"prompt file {source} {what}; expected \"format\": \"{PROMPT_FORMAT}\" "
                        f"(see nnunet_cps4/text_prompts/README.md)")
    classes = data.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise CPS4Error(f"prompt file {source}: 'classes' must be a non-empty object mapping each dataset.json "
                        f"label name to a list of prompts, got {classes!r}"[:400])
    fg = foreground_classes(dataset_json)
    names = [n for n, _ in fg]
    problems = []
    missing = [n for n in names if n not in classes]
    unknown = [n for n in classes if n not in set(names)]
    if missing:
        problems.append(f"no prompts for dataset classes {missing}")
    if unknown:
        problems.append(f"prompts for classes not in dataset.json labels {unknown} "
                        f"(background and ignore take no prompts)")
    prompts = {}
    for name, entry in classes.items():
        if not isinstance(entry, list):
            problems.append(f"class {name!r}: prompts must be a list of strings, got {type(entry).__name__}")
            continue
        if not entry:
            problems.append(f"class {name!r}: empty prompt list")
            continue
        clean = []
        for i, p in enumerate(entry):
            if not isinstance(p, str):
                problems.append(f"class {name!r}: prompt {i} is a {type(p).__name__} ({p!r}), not a string")
            elif not p.strip():
                problems.append(f"class {name!r}: prompt {i} is an empty string")
            else:
                clean.append(p.strip())
        prompts[name] = clean
    if problems:
        raise CPS4Error(f"prompt file {source} does not fit the dataset: " + "; ".join(problems) +
                        ". Fix: the keys under 'classes' must be exactly the dataset.json label names except "
                        "background and ignore, each with a non-empty list of non-empty strings")
    order = data.get(SPINE_ORDER_KEY)
    return ClassPrompts(names, [i for _, i in fg], {n: prompts[n] for n in names}, source,
                        spine_order=None if order is None else _check_spine_order(order, source, names))


def _check_spine_order(value, source: str, names: Sequence[str]) -> SpineOrder:
    """A prompt file's "spine_order", checked against the dataset's class names; all problems in one CPS4Error."""
    d = value if isinstance(value, dict) else {}
    seq, discs, anchor = d.get("sequence"), d.get("discs"), d.get("anchor")
    lists = all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in (seq, discs))
    seq, discs = (seq, discs) if lists else ([], [])
    unknown, extra = [n for n in seq + discs if n not in names], sorted(set(d) - {"sequence", "discs", "anchor"})
    breaks = [f"{a!r} -> {b!r}" for a, b in zip(seq, seq[1:]) if (a in discs) == (b in discs)]
    problems = [what for bad, what in (
        (not isinstance(value, dict), f"must be an object, got {type(value).__name__}"),
        (extra, f"unknown keys {extra}"),
        (isinstance(value, dict) and not lists, "'sequence' and 'discs' must be lists of class names"),
        (lists and len(seq) < 2, "'sequence' needs at least two classes"),
        (unknown, f"names that are not dataset.json foreground labels: {unknown}"),
        (len(set(seq)) < len(seq), f"names listed twice in 'sequence': {sorted({n for n in seq if seq.count(n) > 1})}"),
        (any(n not in seq for n in discs), "every name in 'discs' must also be in 'sequence'"),
        (breaks, f"vertebrae and discs must alternate, but two of a kind follow each other: {', '.join(breaks)}"),
        (lists and anchor is not None and anchor not in seq, f"'anchor' {anchor!r} is not in 'sequence'")) if bad]
    if problems:
        raise CPS4Error(f"prompt file {source}: '{SPINE_ORDER_KEY}' " + "; ".join(problems) + ". Fix: "
                        f"\"{SPINE_ORDER_KEY}\": {{\"sequence\": [class names from caudal to cranial, vertebrae and "
                        f"discs alternating], \"discs\": [the discs among them], \"anchor\": \"a class to count "
                        f"from, e.g. S (optional)\"}}, names as in dataset.json labels (see text_prompts/README.md)")
    return SpineOrder(tuple(seq), tuple(discs), anchor)


def _parse_prompt_text(text: str, source: str, dataset_json: dict) -> ClassPrompts:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CPS4Error(f"prompt file {source} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}. "
                        f"Fix: correct the JSON syntax") from None
    return _check_prompts(data, source, dataset_json)


def load_prompt_file(path, dataset_json: dict) -> ClassPrompts:
    """Load and validate one prompt file (a path) against dataset.json's labels."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isfile(path):
        raise CPS4Error(f"prompt file {path} not found. Fix: check the path, or use a shipped prompt file "
                        f"({', '.join(shipped_prompt_files()) or 'none'})")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CPS4Error(f"prompt file {path} could not be read: {e}") from None
    return _parse_prompt_text(text, path, dataset_json)


def shipped_prompt_files() -> List[str]:
    """Names (without .json) of the prompt files shipped in nnunet_cps4.text_prompts."""
    return sorted(r.name[:-5] for r in resources.files(SHIPPED_PACKAGE).iterdir()
                  if r.name.endswith(".json") and r.is_file())


def load_shipped_prompts(name: str, dataset_json: dict) -> ClassPrompts:
    """Load a shipped prompt file by name ("mrspineseg" or "mrspineseg.json")."""
    stem = name[:-5] if name.endswith(".json") else name
    if stem not in shipped_prompt_files():
        raise CPS4Error(f"no shipped prompt file named {name!r}; shipped: {shipped_prompt_files()}")
    res = resources.files(SHIPPED_PACKAGE) / f"{stem}.json"
    return _parse_prompt_text(res.read_text(encoding="utf-8"), str(res), dataset_json)


def prompt_setting(dataset_json: dict) -> Tuple[Optional[str], str]:
    """(value, where it came from) of the prompt selection; (None, "") when neither setting is present."""
    env = os.environ.get(PROMPTS_ENV, "").strip()
    if env:
        return env, f"environment variable {PROMPTS_ENV}"
    value = _cps4_settings(dataset_json).get(PROMPT_FILE_KEY)
    if value is None:
        return None, ""
    where = f"dataset.json '{CPS4_JSON_KEY}.{PROMPT_FILE_KEY}'"
    if not isinstance(value, str) or not value.strip():
        raise CPS4Error(f"{where} must be a non-empty string (a shipped prompt file name or a path), got {value!r}")
    return value.strip(), where


def load_class_prompts(dataset_json: dict, raw_dataset_folder: Optional[str] = None) -> ClassPrompts:
    """The class prompts of a dataset: env var nnUNet_cps4_prompts > dataset.json cps4.prompt_file > templates.

    raw_dataset_folder: the nnUNet_raw/DatasetXXX_Name folder; relative prompt-file paths are resolved against it
    (against the current directory when None).
    """
    value, where = prompt_setting(dataset_json)
    if value is None or value == TEMPLATE_SOURCE:
        return template_prompts(dataset_json)
    is_bare = os.sep not in value and "/" not in value and not os.path.isabs(value)
    stem = value[:-5] if value.endswith(".json") else value
    shipped = shipped_prompt_files()
    if is_bare and stem in shipped:
        return load_shipped_prompts(stem, dataset_json)
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        base = raw_dataset_folder if raw_dataset_folder is not None else os.getcwd()
        path = os.path.join(base, path)
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        base_note = (f"relative to the raw dataset folder {raw_dataset_folder}" if raw_dataset_folder is not None
                     else "relative to the current directory (no raw dataset folder given)")
        raise CPS4Error(f"prompt file {value!r} (from {where}) not found: looked for {path} "
                        f"({'absolute path' if os.path.isabs(os.path.expanduser(value)) else base_note}) and "
                        f"among the shipped prompt files {shipped}. Fix: give an existing path, a shipped name, "
                        f"or '{TEMPLATE_SOURCE}' for prompts built from the label names")
    return load_prompt_file(path, dataset_json)


def load_dataset_prompts(dataset_json: dict, dataset_name: str) -> ClassPrompts:
    """The class prompts of a planned dataset, as training uses them.

    `dataset_json` is the copy nnU-Net's planning wrote to nnUNet_preprocessed (what the trainers read); relative
    prompt-file paths are resolved against the raw dataset folder `$nnUNet_raw/<dataset_name>` when it exists. A
    prompt setting changed in the raw dataset.json after planning is not silently ignored: a CPS4Error says so.
    """
    raw_root = os.environ.get("nnUNet_raw")
    raw_folder = os.path.join(raw_root, dataset_name) if raw_root else None
    if raw_folder is None or not os.path.isdir(raw_folder):
        return load_class_prompts(dataset_json, None)
    raw_json_path = os.path.join(raw_folder, "dataset.json")
    try:
        with open(raw_json_path, encoding="utf-8") as f:
            raw_settings = _cps4_settings(json.load(f))
    except (OSError, ValueError):
        raw_settings = None  # an unreadable raw copy is nnU-Net's to report; training uses the planned copy
    planned = _cps4_settings(dataset_json)
    for key in (PROMPT_FILE_KEY, PROMPT_TEMPLATES_KEY):
        if raw_settings is not None and raw_settings.get(key) != planned.get(key):
            raise CPS4Error(f"{raw_json_path} sets '{CPS4_JSON_KEY}.{key}' to {raw_settings.get(key)!r}, but the "
                            f"planned copy that training reads (nnUNet_preprocessed/{dataset_name}/dataset.json) has "
                            f"{planned.get(key)!r}. Fix: copy the raw dataset.json over the planned one (the prompt "
                            f"setting does not change preprocessing) or rerun nnUNetv2_plan_and_preprocess")
    return load_class_prompts(dataset_json, raw_folder)
