"""Evaluation throughput: nbkit's batched scoring and generation beside the per-example loop.

The same model (the embedded SmolLM2-135M-Instruct, the same weights), the same test rows of
sample:intent and the same token ids (nbkit's own encoding of the prompt, so both sides score
and generate from identical inputs):

- label scoring: ``nbkit.evaluate`` (a prompt with four label words) against the loop people
  write first, ``for row: for choice: model(context + choice)`` summing the label's log-probs;
- generation: ``nbkit.generate`` (greedy, batched) against ``for row: model.generate(...)``
  with the same ``max_new_tokens``, also greedy.

Each side runs in its own process, after loading the model (load time is not counted), the two
alternating, several rounds; the table shows medians and checks both sides agree (the same
predicted labels; generations compared word for word).

    .venv/bin/python bench/eval_throughput.py            # 80 scored rows, 32 generated, 3 rounds (~6 min)
    .venv/bin/python bench/eval_throughput.py --write    # ... and update bench/README.md
    .venv/bin/python bench/eval_throughput.py --quick    # 16 / 4 rows, 1 round: checks the script runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from nbkit.inference import GENERATE_BATCH  # noqa: E402  (imports no torch)

CHOICES = ["refund", "delivery", "account", "other"]
SCORE_PROMPT = dict(name="intent", template="Which team should handle this customer message: refund, delivery, "
                                            "account or other?\nMessage: {{ text }}\nTeam:",
                    target="{{ label }}", choices=CHOICES)
GENERATE_PROMPT = dict(name="reply", template="Write a short, polite first reply to this customer message.\n"
                                              "Message: {{ text }}")
NEW_TOKENS = 32
TARGET = 5.0


def _setup(rows: int):
    import nbkit
    from nbkit.encoding import encode_choice, encode_contexts

    loaded = nbkit.load_model("smollm2-135m")  # cached for nbkit.evaluate / nbkit.generate in this process
    test = list(nbkit.load_data("sample:intent", split="test"))[:rows]
    return nbkit, loaded, test, encode_contexts, encode_choice


def one(side: str, task: str, rows: int) -> dict:
    """Score or generate ``rows`` rows with nbkit or the naive loop in this process."""
    import torch

    nbkit, loaded, test, encode_contexts, encode_choice = _setup(rows)
    model, tok = loaded.model, loaded.tokenizer
    prompt = nbkit.Prompt(**(SCORE_PROMPT if task == "score" else GENERATE_PROMPT))
    contexts = encode_contexts(prompt, test, tok)
    with torch.no_grad():  # warm-up, as part of loading: the first forward pass sets up the CPU kernels
        model(torch.tensor([contexts[0]]))
    started = time.perf_counter()
    if side == "nbkit" and task == "score":
        report = nbkit.evaluate(prompt, data="sample:intent", limit=rows)
        outputs = list(report.predictions[prompt.name]["output"])
    elif side == "nbkit":
        outputs = list(nbkit.generate(prompt, "sample:intent", limit=rows, max_new_tokens=NEW_TOKENS).frame["output"])
    elif task == "score":  # the naive loop: one forward pass per (row, label)
        choice_ids = [encode_choice(prompt, c, tok) for c in CHOICES]
        outputs = []
        with torch.no_grad():
            for ctx in contexts:
                scores = []
                for ids in choice_ids:
                    logits = model(torch.tensor([ctx + ids])).logits[0]
                    logp = logits[len(ctx) - 1:-1].log_softmax(-1)
                    scores.append(float(logp.gather(-1, torch.tensor(ids)[:, None]).sum()))
                outputs.append(CHOICES[max(range(len(CHOICES)), key=scores.__getitem__)])
    else:  # the naive loop: one generate call per row
        outputs = []
        with torch.no_grad():
            for ctx in contexts:
                new = model.generate(torch.tensor([ctx]), attention_mask=torch.ones(1, len(ctx), dtype=torch.long),
                                     max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
                outputs.append(tok.decode(new[0, len(ctx):], skip_special_tokens=True).strip())
    seconds = time.perf_counter() - started
    return {"side": side, "task": task, "rows": rows, "seconds": seconds, "outputs": outputs,
            "peak_memory_mb": common.peak_rss_mb()}


def render(table: list[dict], rounds: int, quick: bool) -> str:
    lines = ["| task | rows | naive loop | nbkit | nbkit / naive | target | outputs agree |",
             "|---|---:|---:|---:|---:|---|---|"]
    for t in table:
        verdict = f"≥ {TARGET:g}x: {'met' if t['ratio'] >= TARGET else 'MISSED'}"
        lines.append(f"| {t['task']} | {t['rows']} | {t['naive']:.1f} s ({t['rows'] / t['naive']:.1f} rows/s) | "
                     f"{t['nbkit']:.1f} s ({t['rows'] / t['nbkit']:.1f} rows/s) | {t['ratio']:.1f}x | {verdict} | "
                     f"{t['agree']} |")
    return "\n".join(lines) + (
        common.caption(quick, f"sample:intent test rows; label scoring over 4 label words (nbkit: batches of 16, one pass per "
        f"context with the label tokens on its cache); generation greedy, {NEW_TOKENS} new tokens at most (nbkit: "
        f"batches of {GENERATE_BATCH}, left-padded). Model load not counted; median of {rounds} round(s), one process each."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--score-rows", type=int, help="rows to score (default 80; --quick 16)")
    parser.add_argument("--generate-rows", type=int, help="rows to generate (default 32; --quick 4)")
    parser.add_argument("--rounds", type=int, help="repetitions (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="16 / 4 rows, 1 round: does it run?")
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    parser.add_argument("--one", nargs=3, metavar=("SIDE", "TASK", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        side, task, rows = args.one
        common.emit(one(side, task, int(rows)))
        return 0
    common.fill(args, args.quick, score_rows=(80, 16), generate_rows=(32, 4), rounds=(3, 1))
    results = []
    for round_ in range(args.rounds):
        for task, rows in (("score", args.score_rows), ("generate", args.generate_rows)):
            for side in (["naive", "nbkit"] if round_ % 2 == 0 else ["nbkit", "naive"]):
                r = common.child(__file__, ["--one", side, task, str(rows)])
                results.append(r)
                print(f"round {round_ + 1} {task:8} {side:5} {r['seconds']:6.1f}s  peak {r['peak_memory_mb']:.0f} MiB",
                      file=sys.stderr, flush=True)
    table = []
    for task, rows in (("score", args.score_rows), ("generate", args.generate_rows)):
        runs = {side: common.quiet([r for r in results if r["task"] == task and r["side"] == side])[0]
                for side in ("naive", "nbkit")}
        naive, ours = (common.median([r["seconds"] for r in runs[s]]) for s in ("naive", "nbkit"))
        a, b = runs["naive"][0]["outputs"], runs["nbkit"][0]["outputs"]
        same = sum(x == y for x, y in zip(a, b))
        table.append({"task": "label scoring" if task == "score" else "generation", "rows": rows, "naive": naive,
                      "nbkit": ours, "ratio": naive / ours, "agree": f"{same}/{len(a)}"})
    text = render(table, args.rounds, args.quick)
    common.publish(text, args.quick, args.write, "eval-table", "eval_throughput", {"runs": results, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
