"""Print the README's results table (markdown) from bench JSON files."""

import json
import sys
from pathlib import Path


def fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def spread(r, key):
    """The figure, with its standard deviation over seeds where the run had several."""
    sd = r.get(f"{key}_sd")
    return fmt(r[key]) if sd is None or r[key] is None else f"{r[key]:.3f} ± {sd:.3f}"


def _settings(r) -> str:
    """The settings a run chose away from the method's defaults, for its label."""
    hp, notes = r.get("hparams") or {}, []
    if r.get("scale", 1.0) != 1.0:
        notes.append(f"scale {r['scale']:g}")
    if r["method"] in ("default", "patchcore"):
        if hp.get("stages", [3, 6]) != [3, 6]:
            notes.append("stages " + " + ".join(map(str, hp["stages"])))
        if hp.get("balance_stages"):
            notes.append("stages balanced")
        if "whiten" in hp:
            notes.append("whitened" if hp["whiten"] else "not whitened")
        if r.get("smoothing") not in (None, 4.0):
            notes.append(f"smoothing {r['smoothing']:g}")
        chosen = [run.get("surface_choice", {}).get("chosen") for run in r.get("runs", [r])]
        if any(chosen):
            notes.append("surface auto: " + ", ".join(map(str, chosen)))
    return f" ({', '.join(notes)})" if notes else ""


def main(paths: list[str]) -> None:
    rows = [json.loads(Path(p).read_text()) for p in paths]
    rows.sort(key=lambda r: (Path(r["data"]).name, r["method"], r["anomaly_fraction"]))
    print("| set | method | G | seeds | train good / defect | image AUROC | pixel AUROC | FAR / recall at threshold "
          "| train s | ms / image | device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        seeds = ",".join(map(str, r.get("seeds", [r.get("seed", 0)])))
        method = r["method"].replace("default", "patchcore")           # bench records what was asked for
        method += _settings(r)
        print(f"| {Path(r['data']).name} | {method} | {r['anomaly_fraction']:g} | {seeds} "
              f"| {r['n_train_good']} / {r['n_train_defect']} | {spread(r, 'image_auroc')} "
              f"| {spread(r, 'pixel_auroc')} "
              f"| {fmt(r['false_alarm_rate'], 3)} / {fmt(r['recall'], 3)} | {r['train_seconds']:.0f} "
              f"| {r['score_ms_per_image']:.2f} | {r['device'].split(' ')[0]} |")


if __name__ == "__main__":
    main(sys.argv[1:])
