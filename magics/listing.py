"""``%nbkit``'s texts: the session listing, the tuning methods with their options, and the help."""

from __future__ import annotations

import dataclasses

from nbkit.methods import METHODS, available_methods
from nbkit.objectives import OBJECTIVES

from .options import flag, shown


def listing() -> str:
    """The session's prompts, runs and loaded models, as text (no heavy imports)."""
    from nbkit.session import available_runs, current

    lines = ["prompts:"] + [f"  {n}: {', '.join(sorted(p.variables)) or 'no variables'}"
                            + (f"; choices {', '.join(p.choices)}" if p.choices else "")
                            for n, p in current().prompts.items()]
    lines += ["runs:"] + [f"  {n}" for n in available_runs()]
    loaded = [m for kind in ("decoder", "encoder", "seq2seq") for m in current().loaded(kind)]
    lines += ["models loaded:"] + [f"  {m!r}" for m in loaded]
    return "\n".join(lines)


def methods_text() -> str:
    """Each registered method, its default learning rate and its options with their defaults
    (``--max-parameters (2e+09)``; ``auto`` where the method decides, e.g. from the prompt)."""
    lines = []
    for name in available_methods():
        method = METHODS[name]
        options = ", ".join(f"{flag(f.name)} ({shown(f)})" for f in dataclasses.fields(method.options))
        lines.append(f"{name:14} {method.summary}\n{'':14} lr {method.lr:g}; options: {options or 'none'}")
    return "\n".join(lines)


def objectives_text() -> str:
    """Each training objective, what it learns from and its options with their defaults."""
    lines = []
    for name, objective in OBJECTIVES.items():
        options = ", ".join(f"{flag(f.name)} ({shown(f.default)})" for f in dataclasses.fields(objective.options))
        lines.append(f"{name:6} {objective.summary}\n{'':6} options: {options or 'none'}")
    return "\n".join(lines)


def power_text(values) -> str:
    """``%nbkit power 0.78 0.85``: the test rows per system that separate two accuracies (95%, power 80%)."""
    from IPython.core.error import UsageError

    from nbkit.stats import rows_needed, wilson

    try:
        p1, p2 = (float(v) for v in values)
        rows = rows_needed(p1, p2)
    except ValueError as e:
        raise UsageError(f"usage: %nbkit power P1 P2 (two different accuracies between 0 and 1): {e}") from None
    low, high = wilson(round(p1 * 80), 80)
    first, second = (str(v).strip() for v in values)  # as typed: 0.800 stays 0.800
    return (f"{rows} test rows per system tell {first} from {second} apart (two-sided 5%, power 80%). For scale: "
            f"on 80 rows an accuracy of {first} has a 95% interval of about [{low:.2f}, {high:.2f}].")


HELP = """nbkit magics  ($name in a magic line is replaced by the notebook variable; {{ }} is left to Jinja)

  %%prompt NAME [--target T] [--choices a,b] [--system S] [--shots K] [--run --data D --limit N] [-o VAR]
      define a Jinja2 prompt from the cell body; --run generates on N rows (or, with no
      variables and no --data, sends the text to the model like a chat cell)
  %tune --prompt NAME --data D [--method M] [--epochs E] [--lr LR] [--dev 0.1] [--name RUN] [--resume] [-o VAR]
      fine-tune with lora, qlora, dora, ia3, prompt-tuning, p-tuning, prefix-tuning or full;
      a live widget in Jupyter, plain lines under papermill; returns a Run
  %tune --prompt A --data DA --prompt B --data DB [--weights 1,2] ...
      multi-task: one adapter on several prompts/data sets, weighted loss, each task's loss logged
  %tune --prompt NAME --data D --objective dpo|orpo|kto [--beta 0.1]
      preference tuning on chosen/rejected rows (kto: completion + true/false label), through TRL
  %tune --prompt NAME --data D --objective grpo --reward exact_match[,format] [--reward-fn VAR] [--generations 4]
      reward tuning: sampled completions scored by nbkit's metrics or your f(completions, rows)
  %tune ... --export job.yaml
      write the validated job instead of training: nbkit tune --config job.yaml (also under torchrun)
  %evaluate --prompt NAME [--prompt ...] [--run RUN ...] [--data D] [--split test] [--metric M] [-o VAR]
      score prompts and runs side by side; returns a Report (.frame is a DataFrame)
  %evaluate --search --prompt NAME [--prompt ...] --data D [--words a=x,b=y] [--shots 0,4]
            [--selection random,balanced,nearest] [--paraphrases 3] [--name BEST] [-o VAR]
            [--strategy grid|rl|gradient] [--budget 24] [--triggers 4 --steps 8]
      rank candidate prompts on a dev split (all, by policy gradient, or AutoPrompt triggers);
      the best is registered as a prompt
  %evaluate --versus --prompt NAME --data D [--shots 4] [--epochs 2 | --max-steps N] [--limit N]
            [--approaches zero-shot,few-shot,searched,prompt-tuning,lora,qlora] [-o VAR]
      prompt vs fine-tune: every approach on the same test rows, accuracy next to trainable
      parameters, training/search/evaluation seconds and peak memory, in one Report
  %nbkit [list|methods|objectives|samples|help]
      list prompts, runs and loaded models; the tuning methods; the training objectives; the sample data sets
  %nbkit login openai
      ask for an API key (not echoed, kept in memory only) for --model openai:NAME
  %nbkit power 0.78 0.85
      how many test rows tell two accuracies apart (95%, power 80%): nbkit.stats.rows_needed

Data: sample:NAME, a .csv/.jsonl/.json/.parquet file, hf:ID[:CONFIG], or a variable name.
Models: smollm2-135m (embedded), a local directory, a hub id, or openai:NAME [--base-url URL]
        (any OpenAI-compatible server; `nbkit serve --run RUN` serves tuned runs that way)
Each magic's own help: %tune?  %evaluate?  %%prompt?"""
