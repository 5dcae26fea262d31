#!/usr/bin/env python3
"""How the sequence detector's defaults were chosen (docs/evaluation.md, "Sequence detector").

Runs `vigil eval --protocol nab --model sequence` over a grid of settings, one NAB category at
a time. The procedure that chooses a setting from a set of categories: the worst category's
mean of the standard and low-FP scores, averaged over the setting and its neighbours on the
grid (so that one lucky point does not win); the best such setting.

The default is the procedure applied to all six labelled categories of NAB's development set.
What that procedure is worth on series it did not see is reported by leaving one category out
at a time (choose on the other five, score the one left out: nested, so no category is ever
scored under a setting chosen with its labels), and by the two three-category folds (choose on
A = artificialWithAnomaly, realAWSCloudwatch, realTweets, report B = realAdExchange,
realKnownCause, realTraffic; and the reverse).

    python3 docs/selection/sequence_defaults.py --vigil target/release/vigil \
        --nab-dev ../shared/data/nab-dev

Standard library only; about 2 minutes on 2 cores.
"""
import argparse
import itertools
import json
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

GROUP_A = ["artificialWithAnomaly", "realAWSCloudwatch", "realTweets"]
GROUP_B = ["realAdExchange", "realKnownCause", "realTraffic"]
CATEGORIES = GROUP_A + GROUP_B
GRID = {
    "bins": [8, 16, 32],
    "scales": [2, 3],
    "order": [1],
    "short": [10, 20, 30, 40],
    "long": [3000, 10000],
    "z": [3.72, 4.5, 5.5],
    "debounce": ["1,1,60", "1,1,120", "5,10,30", "5,10,60", "5,10,120"],
}


def category_dirs(nab_dev, root):
    windows = json.load(open(os.path.join(nab_dev, "windows.json")))
    for category in CATEGORIES:
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


def key(setting):
    return tuple(sorted(setting.items()))


def neighbours(setting):
    for name, values in GRID.items():
        i = values.index(setting[name])
        for j in (i - 1, i + 1):
            if 0 <= j < len(values):
                yield key({**setting, name: values[j]})


def choose(settings, results, categories):
    """The procedure: the index of the setting it picks on `categories`."""
    criterion = {
        key(s): min((r[c]["nab_standard"] + r[c]["nab_low_fp"]) / 2 for c in categories)
        for s, r in zip(settings, results)
    }

    def smoothed(s):
        near = [criterion[k] for k in neighbours(s)]
        return (criterion[key(s)] + sum(near)) / (1 + len(near))

    return max(range(len(settings)), key=lambda i: smoothed(settings[i]))


def figures(result, categories):
    mean = lambda m: sum(result[c][m] for c in categories) / len(categories)
    return f"standard {mean('nab_standard'):.2f}, low-FP {mean('nab_low_fp'):.2f}, low-FN {mean('nab_low_fn'):.2f}"


# Each profile's weight of a missed window: a category's score is 100 (raw − null) / (perfect −
# null) with perfect = its windows and null = −weight × its windows, so raw scores pool.
MISSED = {"nab_standard": 1.0, "nab_low_fp": 1.0, "nab_low_fn": 2.0}


def pooled(results):
    """NAB's scores of several categories' series scored together (`results`: one per category)."""
    out = []
    for profile, weight in MISSED.items():
        windows = sum(r["windows"] for r in results)
        raw = sum(r[profile] / 100 * (1 + weight) * r["windows"] - weight * r["windows"] for r in results)
        out.append(100 * (raw + weight * windows) / ((1 + weight) * windows))
    return "standard {:.2f}, low-FP {:.2f}, low-FN {:.2f} (pooled)".format(*out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vigil", required=True)
    parser.add_argument("--nab-dev", required=True)
    a = parser.parse_args()
    settings = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    with tempfile.TemporaryDirectory() as root:
        category_dirs(a.nab_dev, root)

        def run(setting):
            return {c: evaluate(a.vigil, os.path.join(root, c), setting) for c in CATEGORIES}

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            results = list(pool.map(run, settings))

    print("leave one category out (choose on the other five, score the one left out):")
    held_out = {}
    for left in CATEGORIES:
        picked = choose(settings, results, [c for c in CATEGORIES if c != left])
        held_out[left] = results[picked][left]
        print(f"  {left}: {settings[picked]} -> {figures(results[picked], [left])}")
    print("  the six held-out categories:", figures(held_out, CATEGORIES), "per-category means;",
          pooled(list(held_out.values())))
    for name, on, off in (("A", GROUP_A, GROUP_B), ("B", GROUP_B, GROUP_A)):
        picked = choose(settings, results, on)
        print(f"chosen on group {name} -> {settings[picked]}")
        print(f"  chosen on: {figures(results[picked], on)}; {pooled([results[picked][c] for c in on])}")
        print(f"  reported on: {figures(results[picked], off)}; {pooled([results[picked][c] for c in off])}")
    picked = choose(settings, results, CATEGORIES)
    print("the default, chosen on all six ->", settings[picked])
    print("  in-group:", figures(results[picked], CATEGORIES), ";", pooled([results[picked][c] for c in CATEGORIES]))


if __name__ == "__main__":
    main()
