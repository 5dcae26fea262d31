#!/usr/bin/env python3
"""Leave-one-group-out for the adaptive detector's defaults (docs/evaluation.md).

Moves one `vigil eval` flag at a time over a small grid, runs SKAB's three groups, SKAB whole,
the Tennessee Eastman report and the pump's long run, and prints the two Markdown tables of
docs/evaluation.md: the grid, and per flag the value chosen on two SKAB groups with the third
group's F1 at it. Standard library only.

    python3 docs/scripts/adaptive_logo.py [VIGIL_BINARY] [DATA_DIR]
    # defaults: target/release/vigil ../shared/data
"""
import json
import subprocess
import sys

VIGIL = sys.argv[1] if len(sys.argv) > 1 else "target/release/vigil"
DATA = sys.argv[2] if len(sys.argv) > 2 else "../shared/data"
GROUPS = ["valve1", "valve2", "other"]
GRID = {
    "--window": ["5", "10", "20"],
    "--tolerance": ["0", "0.005", "0.01"],
    "--factor": ["2", "2.5", "3"],
    "--refit-every": ["25", "50", "100"],
    "--history": ["200", "400", "800"],
    "--guard": ["30", "60", "120"],
    "--rescale-after": ["400", "800", "1600"],
    "--debounce": ["3,10,30", "5,10,30", "7,10,30", "5,10,15", "5,10,60"],
}
DEFAULTS = {"--window": "10", "--tolerance": "0.005", "--factor": "2.5", "--refit-every": "50",
            "--history": "400", "--guard": "60", "--rescale-after": "800", "--debounce": "5,10,30"}


def evaluate(args):
    out = subprocess.run([VIGIL, "eval", "--json"] + args, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def measure(flag, value):
    model = ["--model", "adaptive", flag, value]
    groups = {g: evaluate(["--data", f"{DATA}/skab/{g}"] + model)["f1"] for g in GROUPS}
    whole = evaluate(["--data", f"{DATA}/skab"] + model)
    tep = evaluate(["--protocol", "tep", "--data", f"{DATA}/tep"] + model)
    long_run = evaluate(["--protocol", "long-run", "--data",
                         f"{DATA}/skab/anomaly-free/anomaly-free-part1.csv"] + model)
    return {"groups": groups, "whole": whole, "tep": tep, "long_run": long_run["far"]}


def choose(values, held_out, default):
    """The value with the best mean F1 on the groups other than `held_out` (ties: the default)."""
    others = [g for g in GROUPS if g != held_out]
    score = {v: sum(m["groups"][g] for g in others) / 2 for v, m in values.items()}
    best = max(score.values())
    tied = [v for v in values if abs(score[v] - best) < 1e-9]
    return default if default in tied else tied[0]


def main():
    results = {flag: {v: measure(flag, v) for v in values} for flag, values in GRID.items()}
    print("| flag | value | SKAB valve1 / valve2 / other F1 | SKAB all: F1 / FAR / MAR / NAB "
          "| TEP detection / delay / false % | long run % |")
    print("|---|---|---|---|---|---|")
    for flag, values in results.items():
        for v, m in values.items():
            b = "**" if v == DEFAULTS[flag] else ""
            w, t = m["whole"], m["tep"]
            groups = " / ".join(f"{m['groups'][g]:.2f}" for g in GROUPS)
            print(f"| `{flag}` | {b}{v}{b} | {groups} | {w['f1']:.2f} / {w['far']:.2f} / "
                  f"{w['mar']:.2f} / {w['nab_standard']:.2f} | {t['mean_detection_rate']:.3f} / "
                  f"{t['median_delay']} / {t['false_alarm_rate']:.2f} | {m['long_run']:.2f} |")
    print()
    print("| flag | default chosen in | held-out F1 of the value chosen on the other two groups "
          "(valve1 / valve2 / other; mean) | the default's (mean) |")
    print("|---|---|---|---|")
    for flag, values in results.items():
        default = DEFAULTS[flag]
        picks = [choose(values, g, default) for g in GROUPS]
        held = [values[p]["groups"][g] for p, g in zip(picks, GROUPS)]
        own = [values[default]["groups"][g] for g in GROUPS]
        cells = " / ".join(f"{h:.2f} ({p})" for h, p in zip(held, picks))
        print(f"| `{flag}` | {sum(p == default for p in picks)} of 3 folds | {cells}; "
              f"{sum(held) / 3:.3f} | {sum(own) / 3:.3f} |")


if __name__ == "__main__":
    main()
