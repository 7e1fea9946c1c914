"""A tuned run scored by lm-evaluation-harness and called from DSPy, beside nbkit's own %evaluate.

    .venv/bin/python examples/peers.py RUN [--limit 40]

Serves RUN with `nbkit serve`, writes the run's prompt and data as an lm-eval task
(`nbkit.lm_eval_task`), scores it with lm-eval's `local-completions` against the server (the
tokenizer from the server's /tokenize) and prints that beside `nbkit.evaluate`'s accuracy; then
compiles a DSPy `Predict` with `LabeledFewShot` on the run's training rows and scores it with
`dspy.Evaluate`. Needs `pip install "lm-eval[api]" dspy` (both are in requirements-dev.txt) and a
run trained on a prompt with choices, e.g. the quickstart's
(`%tune --prompt intent --data sample:intent --name quickstart`).
"""

import argparse
import os
import secrets
import tempfile

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm would fetch its price list


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=40)
    args = parser.parse_args()

    import dspy
    import lm_eval
    from lm_eval.tasks import TaskManager

    import nbkit
    from nbkit.data import load_data
    from nbkit.evaluation.harness import task_name
    from nbkit.serve import start
    from nbkit.session import get_run

    run = get_run(args.run)
    prompt, data = nbkit.Prompt.from_dict(run.prompt), run.tasks[0]["data"]
    ours = nbkit.evaluate(run=run, data=data, limit=args.limit).frame["accuracy"].iloc[0]
    key = secrets.token_hex(16)
    with start(model=run.config["model"], runs=[run], api_key=key) as server, tempfile.TemporaryDirectory() as folder:
        task = task_name(prompt)
        os.environ["OPENAI_API_KEY"] = key
        theirs = lm_eval.simple_evaluate(
            model="local-completions", tasks=[task],
            task_manager=TaskManager(include_path=str(nbkit.lm_eval_task(prompt, data, folder, limit=args.limit))),
            model_args=f"model={run.name},base_url={server.url}/completions,tokenizer_backend=remote,auth_token={key}",
        )["results"][task]["acc,none"]
        print(f"accuracy on {args.limit} rows: nbkit {ours:.3f}, lm-eval local-completions {theirs:.3f}")

        splits = load_data(data)
        field = sorted(prompt.input_columns)[0]

        def examples(split, n):
            return [dspy.Example(text=r[field], label=prompt.render_target(r)).with_inputs("text")
                    for r in list(splits[split])[:n]]

        lm = dspy.LM(f"openai/{run.name}", api_base=server.url, api_key=key, cache=False, temperature=0,
                     max_tokens=48)
        program = dspy.LabeledFewShot(k=4).compile(dspy.Predict("text -> label"), trainset=examples("train", 8))
        with dspy.context(lm=lm):
            score = dspy.Evaluate(devset=examples("test", 8), num_threads=1)(
                program, metric=lambda ex, pred, trace=None: ex.label == pred.label)
        print(f"DSPy LabeledFewShot(k=4) on the served run: {float(score.score):.1f}% of 8 test rows")


if __name__ == "__main__":
    main()
