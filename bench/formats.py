"""The prompt's format, chat template or plain text, on the embedded instruct model, zero- and few-shot.

For each shipped classification prompt (the notebooks' own), zero-shot and with 4 nearest shots
(the few-shot setting the search finds best on ``sample:intent``), the same template scored twice on
the whole test split: through the model's chat template (``Prompt(chat=True)``, the default for
a model that has one) and as the plain text (``chat=False``). Each accuracy comes with its 95%
Wilson interval, the difference with its paired-bootstrap interval and the exact McNemar p
(``Report.compare``), so a gap the rows cannot support reads as such.

    .venv/bin/python bench/formats.py            # ~8 min on 2 CPU cores
    .venv/bin/python bench/formats.py --write    # ... and update bench/README.md
    .venv/bin/python bench/formats.py --quick    # 8 rows of one set, both shot settings: does it run?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PROMPTS = {  # name: (data, template, choices): the prompts of 00_quickstart, 01_prompt_design, 02_classification
    "topic (02)": ("sample:topic", "Which section of the newspaper does this story belong to: sports, business, "
                   "science, politics or entertainment?\nStory: {{ text }}\nSection:",
                   ["sports", "business", "science", "politics", "entertainment"]),
    "sentiment (02)": ("sample:sentiment", "Is this product review positive or negative?\nReview: {{ text }}\nAnswer:",
                       ["positive", "negative"]),
    "sentiment instructed (01)": ("sample:sentiment", "Is this product review positive or negative? Answer with one "
                                   "word.\nReview: {{ text }}", ["positive", "negative"]),
    "intent (00)": ("sample:intent", "Which team should handle this customer message? Answer refund, delivery, "
                    "account or other.\nMessage: {{ text }}\nTeam:", ["refund", "delivery", "account", "other"]),
}


def measure(name: str, shots: int, limit: int | None) -> dict:
    import nbkit
    from nbkit.prompts import Prompt

    data, template, choices = PROMPTS[name]
    chat, plain = (Prompt(template, name=f"p-{kind}", target="{{ label }}", choices=choices, chat=kind == "chat",
                          shots=shots, selection="nearest") for kind in ("chat", "plain"))
    report = nbkit.evaluate([chat, plain], data=data, limit=limit)
    ranges = report.intervals("accuracy")
    diff = report.compare("p-chat", "p-plain", metric="accuracy").loc["accuracy"]
    return {"prompt": name, "shots": shots, "data": data, "rows": int(report.frame["n"].iloc[0]),
            **{kind: [float(ranges.loc[f"p-{kind}", c]) for c in ("accuracy", "accuracy_low", "accuracy_high")]
               for kind in ("chat", "plain")},
            "difference": [float(diff[c]) for c in ("difference", "low", "high")], "p": float(diff["p_value"])}


def table(results: dict) -> str:
    lines = ["| prompt | shots | data (test rows) | chat template | plain text | plain − chat [95%], McNemar p |",
             "|---|---|---|---|---|---|"]
    for r in results.values():
        cell = lambda v: f"{v[0]:.3f} [{v[1]:.2f}, {v[2]:.2f}]"  # noqa: E731
        d = r["difference"]
        shots = f"{r['shots']} nearest" if r["shots"] else "0"
        lines.append(f"| {r['prompt']} | {shots} | `{r['data']}` ({r['rows']}) | {cell(r['chat'])} | {cell(r['plain'])} | "
                     f"{d[0]:+.3f} [{d[1]:+.2f}, {d[2]:+.2f}], p = {r['p']:.2g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", default=",".join(PROMPTS), help="comma-separated names of PROMPTS")
    parser.add_argument("--shots", default="0,4", help="comma-separated numbers of nearest shots")
    parser.add_argument("--quick", action="store_true", help="8 rows of the first prompt: does it run?")
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    args = parser.parse_args()
    names = args.prompts.split(",")[:1] if args.quick else args.prompts.split(",")
    results = {f"{name}, {k} shots": measure(name, k, 8 if args.quick else None)
               for name in names for k in map(int, args.shots.split(","))}
    text = table(results) + common.caption(
        args.quick, "Label scoring on the embedded SmolLM2-135M-Instruct, each prompt's whole test split, the same "
                    "template through the chat template and as plain text; few-shot rows take the 4 training rows "
                    "nearest each test row (all-MiniLM-L6-v2).")
    common.publish(text, args.quick, args.write, "formats-table", "formats", results)


if __name__ == "__main__":
    main()
