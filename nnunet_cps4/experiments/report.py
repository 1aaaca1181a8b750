"""The benchmark's report: mean ± sd over split seeds, paired differences to supervised nnU-Net, the markdown
table, the per-class bar plot and the picture of test-case predictions."""
import json
import os
from typing import List

import numpy as np
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

BASELINE = "supervised"  # the method every other one is compared with, on the same split


def mean_sd(values) -> List[float]:
    """[mean, sample sd] over seeds, NaNs (class absent from every test case) ignored; the sd is NaN for a
    single value (one seed has no spread) and both are NaN if all values are."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return [float("nan"), float("nan")]
    return [float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else float("nan")]


def paired_vs_baseline(runs: List[dict], fraction: float, method: str) -> List[float]:
    """mean Dice of `method` minus supervised nnU-Net's on the same split, one value per seed where both ran."""
    return [r["methods"][method]["mean"]["Dice"] - r["methods"][BASELINE]["mean"]["Dice"] for r in runs
            if r["fraction"] == fraction and method in r["methods"] and BASELINE in r["methods"]]


def average_metrics(values: List):
    """The mean of several trainings' metrics (nested dicts of numbers, as `evaluate_folder` writes them): numbers
    averaged (NaNs ignored), dicts merged key by key, anything else (case lists, trainer names) from the first."""
    first = values[0]
    if isinstance(first, dict):
        return {k: average_metrics([v[k] for v in values if isinstance(v, dict) and k in v]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        finite = [float(v) for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")
    return first


def merge_repeats(runs: List[dict]) -> List[dict]:
    """One run per (fraction, seed): where a method was trained more than once on the same split (the benchmark's
    --repeats), its metrics averaged over the trainings, with their mean Dice kept as `repeat_Dice`. The split is
    the unit of the mean ± sd and of the pairing with supervised nnU-Net; the repeats only make each split's value
    less noisy and measure the run-to-run spread."""
    merged = {}
    for run in runs:
        key = (run["fraction"], run["seed"])
        target = merged.setdefault(key, {**{k: v for k, v in run.items() if k not in ("methods", "repeat")},
                                         "methods": {}})
        for method, metrics in run["methods"].items():
            target["methods"].setdefault(method, []).append(metrics)
    for run in merged.values():
        run["methods"] = {m: {**average_metrics(trainings), "repeat_Dice": [t["mean"]["Dice"] for t in trainings]}
                          for m, trainings in run["methods"].items()}
    return list(merged.values())


def run_to_run_sd(per_seed: List[dict]) -> float:
    """Pooled sd of mean Dice between repeated trainings on the same split (NaN without repeats)."""
    variances = [np.var(m["repeat_Dice"], ddof=1) for m in per_seed if len(m.get("repeat_Dice", [])) > 1]
    return float(np.sqrt(np.mean(variances))) if variances else float("nan")


def summarize(runs: List[dict], methods: List[str], class_names: List[str]) -> dict:
    """mean ± sd over seeds of the mean and per-class Dice (and mean IoU/HD95), per fraction and method; repeated
    trainings on one split are averaged first (`merge_repeats`)."""
    runs = merge_repeats(runs)
    summary = {}
    for fraction in sorted({r["fraction"] for r in runs}):
        summary[str(fraction)] = {}
        for method in methods:
            per_seed = [r["methods"][method] for r in runs if r["fraction"] == fraction and method in r["methods"]]
            if not per_seed:
                continue
            entry = {"seeds": len(per_seed), "trainings": sum(len(m["repeat_Dice"]) for m in per_seed),
                     "run_to_run_sd_Dice": run_to_run_sd(per_seed),
                     "paired_Dice_vs_supervised": mean_sd(paired_vs_baseline(runs, fraction, method))}
            for metric in ("Dice", "IoU", "HD95"):
                entry[f"mean_{metric}"] = mean_sd([m["mean"][metric] for m in per_seed])
            entry["foreground_volume_ratio"] = mean_sd([m["foreground_volume_ratio"]["median"] for m in per_seed])
            entry["every_level_placed"] = mean_sd([m["every_level_placed"]["fraction"] for m in per_seed
                                                   if "every_level_placed" in m])  # datasets with a spine order
            entry["per_class_Dice"] = {c: mean_sd([m["per_class"][c]["Dice"] for m in per_seed]) for c in class_names}
            ordered = [m for m in per_seed if "after_ordering" in m]  # datasets with a spine order
            if ordered:
                entry["after_ordering"] = {
                    "mean_Dice": mean_sd([m["after_ordering"]["mean"]["Dice"] for m in ordered]),
                    "gain_Dice": mean_sd([m["after_ordering"]["mean"]["Dice"] - m["mean"]["Dice"] for m in ordered]),
                    "mean_HD95": mean_sd([m["after_ordering"]["mean"]["HD95"] for m in ordered]),
                    "every_level_placed": mean_sd([m["after_ordering"]["every_level_placed"] for m in ordered])}
            quality = [m["pseudo_labels"]["mean_Dice"] for m in per_seed if "pseudo_labels" in m]
            if quality:
                entry["pseudo_label_mean_Dice"] = {k: mean_sd([q[k] for q in quality]) for k in quality[0]}
            volume = [m["pseudo_labels"]["foreground_volume_ratio"] for m in per_seed
                      if "foreground_volume_ratio" in m.get("pseudo_labels", {})]  # older cached runs lack it
            if volume:
                entry["pseudo_label_volume_ratio"] = {k: mean_sd([v[k] for v in volume]) for k in volume[0]}
            ordered = [m["pseudo_labels"]["spine_order"] for m in per_seed
                       if (m.get("pseudo_labels") or {}).get("spine_order")]
            if ordered:
                entry["pseudo_label_spine_order"] = {
                    kind: {when: {metric: mean_sd([o[kind][when][metric] for o in ordered]) for metric in values}
                           for when, values in whens.items()}
                    for kind, whens in ordered[0].items()}
            summary[str(fraction)][method] = entry
    return summary


def fmt_mean_sd(v: List[float], scale: float = 100.0, digits: int = 1, sign: bool = False) -> str:
    """'mean ± sd' (just 'mean' for one seed, 'n/a' without values), scaled to % by default."""
    if np.isnan(v[0]):
        return "n/a"
    text = f"{scale * v[0]:{'+' if sign else ''}.{digits}f}"
    return text if np.isnan(v[1]) else f"{text} ± {scale * v[1]:.{digits}f}"


def markdown_table(summary: dict, class_names: List[str], args) -> str:
    pm = fmt_mean_sd
    repeats = getattr(args, "repeats", 1)
    lines = [f"Schedule `{args.schedule}`, configuration {args.configuration}, batch size {args.batch_size}, fold "
             f"{args.fold}, final checkpoints; Dice in %, mean ± sample sd over seeds {args.seeds} (no sd for one "
             f"seed). 'vs supervised': the method's mean Dice minus supervised nnU-Net's on the same split, "
             f"mean ± sd of these paired differences.", ""]
    if repeats > 1:
        lines += [f"Each method trained {repeats} times per split: a split's value is the mean of its trainings; "
                  f"'run to run' is the pooled sd of mean Dice between trainings on the same split.", ""]
    if len(args.seeds) < 3 and repeats < 2:
        lines += [f"**How far this can be trusted:** {len(args.seeds)} split seed(s) and one training run per "
                  f"method, schedule `{args.schedule}`. nnU-Net training is not deterministic: two identical runs "
                  f"can differ by several Dice points, so a single run decides nothing; compare methods over "
                  f"several split seeds (and repeated runs) before calling a difference.", ""]
    for fraction, methods in summary.items():
        lines += [f"### {float(fraction) * 100:g} % labeled", "",
                  "| method | mean Dice | vs supervised (paired) | mean IoU | mean HD95 (mm) | foreground volume "
                  "pred/true (median) | test cases with every level placed (%) | seeds |"
                  + (" run to run (sd) | trainings |" if repeats > 1 else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|---|" if repeats > 1 else "")]
        for method, e in methods.items():
            lines.append(f"| {method} | {pm(e['mean_Dice'])} | {pm(e['paired_Dice_vs_supervised'], sign=True)} | "
                         f"{pm(e['mean_IoU'])} | {pm(e['mean_HD95'], scale=1.0)} | "
                         f"{pm(e['foreground_volume_ratio'], scale=1.0, digits=2)} | "
                         f"{pm(e['every_level_placed'], digits=0)} | {e['seeds']} |"
                         + (f" {pm([e['run_to_run_sd_Dice'], float('nan')])} | {e['trainings']} |" if repeats > 1
                            else ""))
        after = {m: e for m, e in methods.items() if "after_ordering" in e}
        if after:
            lines += ["", "Spine ordering as post-processing of each method's test predictions "
                      "(`nnUNetv2_cps4_order_levels`, no setting chosen), before → after; 'gain': the paired "
                      "difference per split:", "",
                      "| method | mean Dice | gain | mean HD95 (mm) | test cases with every level placed (%) |",
                      "|---|---|---|---|---|"]
            for m, e in after.items():
                a = e["after_ordering"]
                lines.append(f"| {m} | {pm(e['mean_Dice'])} → {pm(a['mean_Dice'])} | {pm(a['gain_Dice'], sign=True)} | "
                             f"{pm(e['mean_HD95'], scale=1.0)} → {pm(a['mean_HD95'], scale=1.0)} | "
                             f"{pm(e['every_level_placed'], digits=0)} → {pm(a['every_level_placed'], digits=0)} |")
        quality = {m: e["pseudo_label_mean_Dice"] for m, e in methods.items() if "pseudo_label_mean_Dice" in e}
        if quality:
            lines += ["", "Pseudo labels on unlabeled training cases (mean Dice vs their true labels of the final "
                      "teacher and VLM, no test-time augmentation; for supervised nnU-Net its network, i.e. the "
                      "labels self-training would start from; a training signal, not a test score), and the "
                      "median predicted / true foreground volume of each source (shrinking or growing the spine "
                      "shows here without a test prediction):", "",
                      "| method | teacher | VLM (y_text) | refined | foreground volume teacher / VLM / refined |",
                      "|---|---|---|---|---|"]
            for m, q in quality.items():
                volume = methods[m].get("pseudo_label_volume_ratio", {})
                lines.append(f"| {m} | " + " | ".join(pm(q[k]) if k in q else "-" for k in ("teacher", "text",
                                                                                             "refined"))
                             + " | " + " / ".join(pm(volume[k], scale=1.0, digits=2) for k in volume) + " |")
        ordered = {m: e["pseudo_label_spine_order"] for m, e in methods.items() if "pseudo_label_spine_order" in e}
        if ordered:
            lines += ["", "The same pseudo labels relabelled in spine order (`nnunet_cps4.method.spine_order`, whole "
                      "case, unplaceable components to background), before → after; mean Dice and HD95 over the "
                      "ordered classes, and the fraction of cases with every level placed:", "",
                      "| method | source | mean Dice | mean HD95 (mm) | cases with every level placed (%) |",
                      "|---|---|---|---|---|"]
            source = {"teacher": "teacher", "text": "VLM (y_text)", "refined": "refined"}
            for m, kinds in ordered.items():
                for kind, w in kinds.items():
                    lines.append(f"| {m} | {source.get(kind, kind)} | "
                                 + " | ".join(f"{pm(w['before'][k], scale=f)} → {pm(w['after'][k], scale=f)}"
                                              for k, f in (("mean_Dice", 100.0), ("mean_HD95", 1.0),
                                                           ("every_level_placed", 100.0))) + " |")
        lines += ["", "| class | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for c in class_names:
            lines.append(f"| {c} | " + " | ".join(pm(methods[m]["per_class_Dice"][c]) for m in methods) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_summary(summary: dict, class_names: List[str], out_png: str) -> None:
    from nnunet_cps4.plots import plt  # matplotlib (non-interactive backend): only when drawing

    fractions = list(summary)
    fig, axes = plt.subplots(len(fractions), 1, figsize=(12, 3.5 * len(fractions)), squeeze=False)
    for ax, fraction in zip(axes[:, 0], fractions):
        methods = list(summary[fraction])
        width = 0.8 / max(1, len(methods))
        x = np.arange(len(class_names))
        for i, m in enumerate(methods):
            means = [summary[fraction][m]["per_class_Dice"][c][0] for c in class_names]
            sds = [summary[fraction][m]["per_class_Dice"][c][1] for c in class_names]
            ax.bar(x + i * width, means, width, yerr=sds,
                   label=f"{m} ({100 * summary[fraction][m]['mean_Dice'][0]:.1f})")
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels(class_names, fontsize=7, rotation=45)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice")
        ax.set_title(f"{float(fraction) * 100:g} % labeled (mean Dice in legend)", fontsize=9)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def plot_test_cases(out: str, source: str, run: dict, methods: List[str], num_labels: int, out_png: str,
                    num_cases: int = 3) -> None:
    """Every method's prediction of the first test cases of one run, beside image and reference (a picture of
    what the mean Dice summarises; drawn after the evaluation, from its files)."""
    from nnunet_cps4.plots import save_prediction_panels  # matplotlib: only when drawing

    methods = [m for m in methods if m in run["methods"]]
    run_key = f"fraction_{run['fraction']}_seed_{run['seed']}"
    with open(os.path.join(source, "dataset.json")) as f:
        ending = json.load(f)["file_ending"]
    rw = SimpleITKIO()
    rows = []
    for case in sorted(run["methods"][methods[0]]["cases"])[:num_cases] if methods else []:
        image = rw.read_images([os.path.join(source, "imagesTs", f"{case}_0000{ending}")])[0][0]
        reference = rw.read_seg(os.path.join(source, "labelsTs", case + ending))[0][0]
        predictions = [rw.read_seg(os.path.join(out, "predictions", m, run_key, case + ending))[0][0]
                       for m in methods]
        rows.append((case, image, reference, predictions))
    if rows:
        save_prediction_panels(rows, methods, num_labels, out_png)
