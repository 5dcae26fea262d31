#!/usr/bin/env python3
"""How the sequence detector's defaults were chosen (docs/evaluation.md, "Sequence detector").

Runs `vigil eval --protocol nab --model sequence` over a grid of settings, one NAB category at
a time, and chooses on the CHOOSE categories only: the criterion is the worst category's mean
of the standard and low-FP scores, averaged over the setting and its neighbours on the grid
(so that one lucky point does not win). It then prints the chosen setting's figures on the
REPORT categories, which took no part in the choice. `--reverse` swaps the two groups.

    python3 docs/selection/sequence_defaults.py --vigil target/release/vigil \
        --nab-dev ../shared/data/nab-dev [--reverse]

Standard library only; about 3 minutes on 2 cores.
"""
import argparse
import itertools
import json
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

CHOOSE = ["artificialWithAnomaly", "realAWSCloudwatch", "realTweets"]
REPORT = ["realAdExchange", "realKnownCause", "realTraffic"]
GRID = {
    "bins": [8, 16, 32],
    "scales": [2, 3],
    "order": [1],
    "short": [20, 40],
    "long": [3000, 10000],
    "z": [3.72, 4.5, 5.5],
    "debounce": ["1,1,60", "1,1,120", "5,10,30", "5,10,60", "5,10,120"],
}


def category_dirs(nab_dev, root):
    windows = json.load(open(os.path.join(nab_dev, "windows.json")))
    for category in CHOOSE + REPORT:
        d = os.path.join(root, category)
        os.makedirs(d)
        subset = {k: v for k, v in windows.items() if k.startswith(category + "/")}
        json.dump(subset, open(os.path.join(d, "windows.json"), "w"))
        os.symlink(os.path.join(os.path.abspath(nab_dev), category), os.path.join(d, category))


def evaluate(vigil, directory, setting):
    args = [vigil, "eval", "--protocol", "nab", "--data", directory, "--model", "sequence", "--json"]
    for key, value in setting.items():
        args += ["--" + key, str(value)]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vigil", required=True)
    parser.add_argument("--nab-dev", required=True)
    parser.add_argument("--reverse", action="store_true")
    a = parser.parse_args()
    choose, report = (REPORT, CHOOSE) if a.reverse else (CHOOSE, REPORT)
    settings = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    with tempfile.TemporaryDirectory() as root:
        category_dirs(a.nab_dev, root)

        def run(setting):
            return {c: evaluate(a.vigil, os.path.join(root, c), setting) for c in choose + report}

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            results = list(pool.map(run, settings))
    key = lambda s: tuple(sorted(s.items()))
    criterion = {
        key(s): min((r[c]["nab_standard"] + r[c]["nab_low_fp"]) / 2 for c in choose)
        for s, r in zip(settings, results)
    }

    def neighbours(s):
        for name, values in GRID.items():
            i = values.index(s[name])
            for j in (i - 1, i + 1):
                if 0 <= j < len(values):
                    yield key({**s, name: values[j]})

    def smoothed(s):
        near = [criterion[k] for k in neighbours(s)]
        return (criterion[key(s)] + sum(near)) / (1 + len(near))

    best = max(range(len(settings)), key=lambda i: smoothed(settings[i]))
    mean = lambda cats, m: sum(results[best][c][m] for c in cats) / len(cats)
    print("chosen on", ", ".join(choose), "->", settings[best])
    for name, cats in (("chosen on", choose), ("reported on", report)):
        print(
            f"{name}: mean over categories standard {mean(cats, 'nab_standard'):.2f}, "
            f"low-FP {mean(cats, 'nab_low_fp'):.2f}, low-FN {mean(cats, 'nab_low_fn'):.2f}"
        )


if __name__ == "__main__":
    main()
