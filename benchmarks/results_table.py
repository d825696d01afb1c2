"""Print the README's results table (markdown) from bench JSON files."""

import json
import sys
from pathlib import Path


def fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def main(paths: list[str]) -> None:
    rows = [json.loads(Path(p).read_text()) for p in paths]
    rows.sort(key=lambda r: (Path(r["data"]).name, r["method"], r["anomaly_fraction"]))
    print("| set | method | G | train good / defect | image AUROC | pixel AUROC | FAR / recall at threshold "
          "| train s | ms / image | device |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {Path(r['data']).name} | {r['method']} | {r['anomaly_fraction']:g} "
              f"| {r['n_train_good']} / {r['n_train_defect']} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} "
              f"| {fmt(r['false_alarm_rate'], 3)} / {fmt(r['recall'], 3)} | {r['train_seconds']:.0f} "
              f"| {r['score_ms_per_image']:.2f} | {r['device'].split(' ')[0]} |")


if __name__ == "__main__":
    main(sys.argv[1:])
