"""``%%prompt``, ``%tune``, ``%evaluate`` and ``%nbkit``.

Each magic parses its line with ``magic_arguments`` (quotes work, bad flags
raise ``UsageError``, ``%tune?`` shows the help), calls one function of the
nbkit API, displays the result and binds it with ``-o VAR``. Lines are not
variable-expanded: ``--target "{{ label }}"`` reaches nbkit intact.
"""

from __future__ import annotations

import re
import shlex

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from nbkit.events import Callback, PlainProgress

from .progress import progress_mode


_DOLLAR = re.compile(r"\$(\w+)")


def expand(line: str, namespace) -> str:
    """Replace ``$name`` with the notebook variable's value (quoted if needed).

    IPython's own expansion also rewrites ``{…}``, which would eat Jinja's
    ``{{ label }}``; nbkit expands only ``$name``, so parameterised notebooks can
    write ``--data $data`` and templates keep their braces.
    """
    def value(match):
        name = match.group(1)
        return shlex.quote(str(namespace[name])) if name in namespace else match.group(0)

    return _DOLLAR.sub(value, line)


# %tune flags that are method options; each method validates its own and rejects the others by name
METHOD_OPTIONS = ("r", "alpha", "dropout", "target_modules", "feedforward_modules", "virtual_tokens", "init",
                  "encoder", "encoder_hidden", "projection", "max_parameters")


def _number_or_name(value: str | None):
    """``0.1`` → 0.1, ``20`` → 20, ``validation`` → "validation"."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and number >= 1 else number


def _weights(value: str | None) -> list[float] | None:
    """``1,2`` → [1.0, 2.0]; a word that is not a number is a usage error naming --weights."""
    if value is None:
        return None
    try:
        return [float(v) for v in _csv(value)]
    except ValueError:
        raise UsageError(f"--weights takes comma-separated numbers like 1,2; got {value!r}") from None


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


# %evaluate flags by the mode they belong to; a flag given in another mode is a usage error
SEARCH_ONLY = ("words", "selection", "paraphrases", "name", "strategy", "budget", "triggers", "steps")
VERSUS_ONLY = ("approaches", "epochs", "max_steps", "progress")
SEARCH_OR_VERSUS = ("shots", "dev")
NOT_VERSUS = ("run", "split", "metric", "scoring", "batch_size", "base_url", "no_cache", "concurrency")


class _WidgetPerRun(Callback):
    """A fresh ``%tune`` widget for each run of ``%evaluate --versus``; its notes as plain lines."""

    def __init__(self):
        self.widget = None

    def on_begin(self, e):
        from .widgets import TuneWidget

        self.widget = TuneWidget(display=display)
        self.widget.on_begin(e)

    def on_step(self, e):
        self.widget.on_step(e)

    def on_evaluate(self, e):
        self.widget.on_evaluate(e)

    def on_end(self, e):
        self.widget.on_end(e)
        self.widget = None

    def on_note(self, text):
        if self.widget is not None:
            self.widget.on_note(text)
        else:
            print(text, flush=True)


def _callbacks(progress: str) -> list:
    """Progress subscribers as ``%tune --progress`` picks them: a widget, plain lines, or none."""
    mode = progress_mode(progress)
    if mode == "widget":
        from .widgets import TuneWidget

        return [TuneWidget(display=display)]
    return [PlainProgress()] if mode == "plain" else []


@magics_class
class NbkitMagics(Magics):
    """The nbkit magics; registered by ``%load_ext nbkit``."""

    def _parse(self, magic, line: str):
        """Arguments of ``magic`` from ``line``: ``$var`` expanded, quotes removed shell-style."""
        try:
            words = shlex.split(expand(line, self.shell.user_ns))
        except ValueError as e:  # an unbalanced quote
            raise UsageError(f"{e} in: {line}") from None
        return magic.parser.parse_args(words)

    def _bind(self, name: str | None, value):
        if name:
            self.shell.user_ns[name] = value
        return value

    @magic_arguments()
    @argument("name", help="name to register the prompt under")
    @argument("--target", help='template of the expected completion, e.g. "{{ label }}"')
    @argument("--choices", help="comma-separated label words for classification")
    @argument("--system", help="system message (chat models) or preamble")
    @argument("--shots", type=int, default=0, help="few-shot examples drawn from the training split")
    @argument("--selection", default="random", choices=["random", "balanced", "nearest"],
              help="how the shots are drawn: random, balanced (each class in turn), or nearest (the training "
                   "examples most similar to the row, by sentence embedding)")
    @argument("--retrieve", metavar="INDEX",
              help="semantic search: fill {{ passages }} with the documents of INDEX (a variable holding "
                   "nbkit.index(...), or a saved index directory) most similar to each row's question")
    @argument("--k", type=int, default=3, help="with --retrieve: how many passages (default 3)")
    @argument("--query", help="with --retrieve: the column to search with (default question, query or text)")
    @argument("--run", action="store_true", help="render and generate on --limit rows of --data")
    @argument("--data", help="data spec: sample:NAME, a file, hf:ID or a variable name")
    @argument("--split", default="test", help="split the --run rows come from (default test)")
    @argument("--limit", type=int, default=5, help="rows to generate on with --run (default 5)")
    @argument("--model", help="model spec (default: the embedded smollm2-135m), or openai:NAME for an API model")
    @argument("--base-url", help="with --model openai:NAME: the OpenAI-compatible server (default $OPENAI_BASE_URL)")
    @argument("--no-cache", action="store_true", help="with an API model: send requests even if answered before")
    @argument("--adapter", help="a run (name, directory or variable) whose adapter to apply")
    @argument("--max-new-tokens", type=int, default=64, help="longest output with --run")
    @argument("-o", "--output", metavar="VAR", help="bind the result (the Prompt, or the generations) to VAR")
    @no_var_expand
    @cell_magic
    def prompt(self, line, cell):
        """Define a named prompt template (Jinja2) and optionally try it.

        Example::

            %%prompt intent --target "{{ label }}" --choices refund,delivery,account,other
            Which team should handle this customer message?
            Message: {{ text }}
            Team:
        """
        from nbkit.prompts import Prompt
        from nbkit.session import register_prompt

        args = self._parse(self.prompt, line)
        retrieve = None
        if args.retrieve:
            from nbkit.retrieval import get_index

            retrieve = str(get_index(args.retrieve, self.shell.user_ns).path)
        elif args.k != 3 or args.query:
            raise UsageError("--k and --query go with --retrieve")
        prompt = register_prompt(Prompt(
            cell, name=args.name, target=args.target, choices=_csv(args.choices),
            system=args.system, shots=args.shots, selection=args.selection, retrieve=retrieve, k=args.k,
            query=args.query,
        ))
        if not args.run:
            variables = ", ".join(sorted(prompt.variables)) or "none"
            print(f"prompt {prompt.name!r} defined (variables: {variables})")
            self._bind(args.output, prompt)
            return None
        from nbkit.evaluation import generate

        result = generate(prompt, args.data, model=args.model, adapter=args.adapter, split=args.split,
                          limit=args.limit, max_new_tokens=args.max_new_tokens, base_url=args.base_url,
                          cache=not args.no_cache, namespace=self.shell.user_ns)
        return self._bind(args.output, result)

    @magic_arguments()
    @argument("--prompt", action="append",
              help="name of the prompt to train on; repeat with --data for multi-task training "
                   "(not with --task embedding)")
    @argument("--data", action="append", required=True,
              help="data spec whose train split is used; repeated, the n-th --data goes with the n-th --prompt")
    @argument("--weights", help="multi-task: comma-separated loss weight per task, e.g. 1,2 (default all 1)")
    @argument("--task", default="generation", choices=["generation", "classification", "embedding"],
              help="generation (a decoder learns the target text, default); classification (an encoder with a "
                   "head on the prompt's choices); embedding (an encoder, contrastive, on query/positive pairs)")
    @argument("--pooling", help="--task embedding: mean, cls or lasttoken, for a model without a "
                                "sentence-transformers pooling (a decoder, a bare BERT)")
    @argument("--corpus", help="--task embedding: documents the pairs' positive/negative ids refer to "
                               "(default the data's own, as sample:search has)")
    @argument("--model",
              help="base model spec (default smollm2-135m; minilm-l6 with --task classification/embedding)")
    @argument("--method", default="lora",
              help="lora, qlora, dora, ia3, prompt-tuning, p-tuning, prefix-tuning or full (see %%nbkit methods)")
    @argument("--epochs", type=float, default=3, help="passes over the data (default 3)")
    @argument("--max-steps", type=int, help="stop after this many steps")
    @argument("--lr", type=float, help="learning rate (default: the method's)")
    @argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    @argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    @argument("--r", type=int, help="LoRA rank (default 8)")
    @argument("--alpha", type=float, help="LoRA alpha (default 16)")
    @argument("--dropout", type=float, help="LoRA dropout (default 0.05)")
    @argument("--target-modules", help="layers to adapt: all-linear or names like q_proj,v_proj (lora, dora, ia3)")
    @argument("--feedforward-modules", help="ia3: which target modules are feed-forward layers")
    @argument("--virtual-tokens", type=int, help="soft prompt / prefix length (prompt-tuning, p-tuning, prefix-tuning)")
    @argument("--init", help="prompt-tuning: text (start from the prompt's words, default) or random")
    @argument("--encoder", help="p-tuning: prompt encoder, mlp or lstm")
    @argument("--encoder-hidden", type=int, help="p-tuning / prefix-tuning: hidden size of the encoder")
    @argument("--projection", action="store_const", const=True, help="prefix-tuning: reparameterise through an MLP")
    @argument("--max-parameters", type=float, help="full: refuse models larger than this")
    @argument("--max-length", type=int, default=256, help="tokens per example (default 256)")
    @argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default 0.1)")
    @argument("--seed", type=int, default=0, help="random seed (default 0)")
    @argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
              help="autocast: auto (bf16 on GPUs that have it, fp32 on CPU), bf16, fp16 or fp32")
    @argument("--gradient-checkpointing", action="store_true", help="recompute activations: less memory, slower")
    @argument("--dev", help="held-out data scored during training: a fraction (0.1) or count of train, or a split")
    @argument("--eval-every", type=int, help="steps between dev evaluations (default: five per run)")
    @argument("--patience", type=int, help="early stopping: evaluations without improvement before stopping")
    @argument("--name", help="run name (default <prompt>-<method>)")
    @argument("--resume", action="store_true", help="continue run --name from its last checkpoint")
    @argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    @argument("--save-every", type=int, help="steps between checkpoints (default: four per run)")
    @argument("--export", metavar="FILE.yaml",
              help="write the validated job to a file instead of training (run it with nbkit tune --config)")
    @argument("--progress", default="auto", choices=["auto", "widget", "plain", "none"],
              help="live widget, plain lines or nothing (default: widget in Jupyter)")
    @argument("-o", "--output", metavar="VAR", help="bind the Run to VAR")
    @no_var_expand
    @line_magic
    def tune(self, line):
        """Fine-tune the model on a prompt and data set; returns a Run."""
        from nbkit.training import tune

        args = self._parse(self.tune, line)
        callbacks = _callbacks(args.progress)
        options = {name: getattr(args, name) for name in METHOD_OPTIONS + ("pooling", "corpus")}
        if args.task == "generation" and not args.prompt:
            raise UsageError("--prompt is needed: which prompt formats the data?")
        prompts = args.prompt[0] if args.prompt and len(args.prompt) == 1 else args.prompt
        datas = args.data if len(args.data) > 1 else args.data[0]
        run = tune(
            prompts, datas, task=args.task, weights=_weights(args.weights), model=args.model, method=args.method, epochs=args.epochs,
            max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
            max_length=args.max_length, warmup=args.warmup, seed=args.seed, precision=args.precision,
            gradient_checkpointing=args.gradient_checkpointing, dev=_number_or_name(args.dev),
            eval_every=args.eval_every, patience=args.patience, save_every=args.save_every, name=args.name,
            resume=args.resume, overwrite=args.overwrite, export=args.export, namespace=self.shell.user_ns,
            callbacks=callbacks, **{k: v for k, v in options.items() if v is not None},
        )
        if args.export:
            print(f"wrote {run}; run it with: nbkit tune --config {run}  "
                  f"(or torchrun --nproc-per-node N -m nbkit tune --config {run})")
        return self._bind(args.output, run)

    @magic_arguments()
    @argument("--prompt", action="append", help="a prompt to evaluate (repeatable)")
    @argument("--run", action="append", help="a run to evaluate: name, directory or variable (repeatable)")
    @argument("--data", help="data spec (default: the run's training data)")
    @argument("--split", default="test", help="split to evaluate on (default test)")
    @argument("--task", choices=["retrieval"],
              help="retrieval: the base encoder and --run embedding runs on a search data set (default "
                   "sample:search): recall@1, recall@k, MRR, nDCG@k")
    @argument("--k", type=int, default=10, help="--task retrieval: the cut-off of recall@k and nDCG@k (default 10)")
    @argument("--corpus", help="--task retrieval: the documents searched (default the data's own)")
    @argument("--metric", action="append",
              help="with choices: accuracy, f1, precision, recall; free text: exact_match, token_f1, rouge1, "
                   "rouge2, rougeL, perplexity (repeatable; defaults: accuracy,f1 / exact_match,token_f1,rougeL)")
    @argument("--limit", type=int, help="evaluate only the first N rows")
    @argument("--model", help="base model for the prompts (default smollm2-135m), or openai:NAME for an API model")
    @argument("--base-url", help="with --model openai:NAME: the OpenAI-compatible server (default $OPENAI_BASE_URL)")
    @argument("--no-cache", action="store_true", help="with an API model: send requests even if answered before")
    @argument("--concurrency", type=int, default=8, help="with an API model: requests in flight at once (default 8)")
    @argument("--scoring", default="sum", choices=["sum", "mean"],
              help="label log-likelihood: sum, or mean per token (length-normalised)")
    @argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    @argument("--search", action="store_true",
              help="search prompts instead: every --prompt x --words x --shots x --selection (x --paraphrases), "
                   "ranked on a dev split, the best registered as --name")
    @argument("--words", action="append", help="--search: label words to try, label=word,label=word (repeatable)")
    @argument("--shots", help="--search: numbers of few-shot examples to try, e.g. 0,2,4; --versus: examples "
                               "in the few-shot prompt, and the most the search tries (default 4)")
    @argument("--selection", help="--search: how shots are chosen: random, balanced, nearest (comma-separated)")
    @argument("--paraphrases", type=int, default=0, help="--search: instruction rewordings to ask the model for")
    @argument("--dev", help="--search, --versus: a split, or a fraction/count of train to rank prompts on "
                            "(default 0.25)")
    @argument("--name", help="--search: name of the best prompt (default <prompt>-best)")
    @argument("--strategy", default="grid", choices=["grid", "rl", "gradient"],
              help="--search: grid (every candidate), rl (policy gradient over the same edits, --budget prompts) "
                   "or gradient (AutoPrompt trigger tokens, --triggers, --steps)")
    @argument("--budget", type=int, default=24, help="--search --strategy rl: prompts sampled (default 24)")
    @argument("--triggers", type=int, default=4, help="--search --strategy gradient: trigger tokens (default 4)")
    @argument("--steps", type=int, default=8, help="--search --strategy gradient: HotFlip steps (default 8)")
    @argument("--versus", action="store_true",
              help="prompt vs fine-tune: zero-shot, few-shot, searched prompt, prompt-tuning, LoRA and QLoRA on one "
                   "--prompt and the test split, accuracy next to trainable parameters, seconds and peak memory")
    @argument("--approaches",
              help="--versus: which of zero-shot,few-shot,searched,prompt-tuning,lora,qlora to run (default all)")
    @argument("--epochs", type=float, help="--versus: passes over train for each tuned run (default 2)")
    @argument("--max-steps", type=int, help="--versus: stop each tuned run after this many steps instead")
    @argument("--progress", default="auto", choices=["auto", "widget", "plain", "none"],
              help="--versus: the tuned runs' progress as a live widget, plain lines or nothing (default: widget "
                   "in Jupyter)")
    @argument("-o", "--output", metavar="VAR", help="bind the Report to VAR")
    @no_var_expand
    @line_magic
    def evaluate(self, line):
        """Evaluate prompts and tuned runs side by side (or --search prompts, or --versus: prompt vs
        fine-tune in one table); returns a Report."""
        from nbkit.evaluation import evaluate

        args = self._parse(self.evaluate, line)
        if args.search and args.versus:
            raise UsageError("--search and --versus are two different things; give one")
        if args.task and (args.search or args.versus):
            raise UsageError("--task retrieval does not go with --search or --versus")
        if args.search:
            self._refuse(args, VERSUS_ONLY, "belongs to --versus")
            return self._bind(args.output, self._search(args))
        if args.versus:
            self._refuse(args, NOT_VERSUS + SEARCH_ONLY, "does not go with --versus")
            return self._bind(args.output, self._versus(args))
        self._refuse(args, SEARCH_ONLY, "belongs to --search")
        self._refuse(args, SEARCH_OR_VERSUS, "belongs to --search or --versus")
        self._refuse(args, VERSUS_ONLY, "belongs to --versus")
        if args.task == "retrieval":
            self._refuse(args, ("prompt", "metric", "scoring", "base_url", "no_cache"), "does not go with --task retrieval")
            report = evaluate(None, args.run, args.data, model=args.model, split=args.split, limit=args.limit,
                              task="retrieval", k=args.k, corpus=args.corpus, namespace=self.shell.user_ns)
            return self._bind(args.output, report)
        self._refuse(args, ("k", "corpus"), "belongs to --task retrieval")
        report = evaluate(
            args.prompt, args.run, args.data, model=args.model, split=args.split, metric=args.metric,
            limit=args.limit, scoring=args.scoring, batch_size=args.batch_size, base_url=args.base_url,
            cache=not args.no_cache, concurrency=args.concurrency, namespace=self.shell.user_ns,
        )
        return self._bind(args.output, report)

    def _refuse(self, args, names, why: str) -> None:
        """A usage error naming the first of ``names`` given away from its default."""
        parser = self.evaluate.parser
        for name in names:
            if getattr(args, name) != parser.get_default(name):
                raise UsageError(f"--{name.replace('_', '-')} {why}")

    def _versus(self, args):
        from nbkit.config import DEFAULT_MODEL
        from nbkit.versus import APPROACHES, prompt_vs_finetune

        if not args.prompt or len(args.prompt) > 1:
            raise UsageError("--versus compares the approaches on one --prompt")
        if not args.data:
            raise UsageError("--versus needs --data: its train split tunes and its test split scores")
        if args.epochs is not None and args.max_steps is not None:
            raise UsageError("--versus trains for --epochs or for --max-steps; give one")
        try:
            shots = int(args.shots) if args.shots else 4
        except ValueError:
            raise UsageError(f"--versus takes one number of --shots, like 4; got {args.shots!r}") from None
        mode = progress_mode(args.progress)
        callbacks = [_WidgetPerRun()] if mode == "widget" else [PlainProgress()] if mode == "plain" else []
        return prompt_vs_finetune(
            args.prompt[0], args.data, approaches=_csv(args.approaches) or APPROACHES, shots=shots,
            epochs=args.epochs if args.epochs is not None else 2.0, max_steps=args.max_steps, limit=args.limit,
            model=args.model or DEFAULT_MODEL, dev=_number_or_name(args.dev) if args.dev else 0.25,
            namespace=self.shell.user_ns, callbacks=callbacks,
        )

    def _search(self, args):
        from nbkit.search import search_prompts

        if not args.prompt or args.run:
            raise UsageError("--search starts from one or more --prompt (and takes no --run)")
        words = []
        for item in args.words or []:
            pairs = [p.split("=", 1) for p in _csv(item)]
            if any(len(p) != 2 for p in pairs):
                raise UsageError(f"--words takes label=word pairs separated by commas; got {item!r}")
            words.append({k.strip(): v.strip() for k, v in pairs})
        try:
            shots = [int(k) for k in _csv(args.shots)] if args.shots else [0]
        except ValueError:
            raise UsageError(f"--shots takes comma-separated whole numbers like 0,2,4; got {args.shots!r}") from None
        report = search_prompts(
            args.prompt, args.data, words=words, shots=shots, selection=_csv(args.selection) or ["random"],
            paraphrases=args.paraphrases, dev=_number_or_name(args.dev) if args.dev else 0.25,
            metric=args.metric[0] if args.metric else None, model=args.model, scoring=args.scoring,
            name=args.name, batch_size=args.batch_size, strategy=args.strategy, budget=args.budget,
            triggers=args.triggers, steps=args.steps, namespace=self.shell.user_ns,
        )
        print(f"best of {len(report.frame)} candidates on {report.info['rows']} dev rows: {report.info['best']} "
              f"({report.info['ranked_by']} {report.frame.iloc[0][report.info['ranked_by']]:.3f}), "
              f"registered as prompt {report.best.name!r}")
        return report

    @magic_arguments()
    @argument("what", nargs="?", default="list", choices=["list", "help", "methods", "samples", "login"],
              help="list (prompts, runs, models), help, methods, samples, or login openai (asks for the API key)")
    @argument("provider", nargs="?", help="with login: openai")
    @no_var_expand
    @line_magic
    def nbkit(self, line):
        """List the session's prompts, runs and loaded models, print help, or log in to an API."""
        args = self._parse(self.nbkit, line)
        if args.what == "login":
            import getpass

            from nbkit.models.api import login

            if args.provider != "openai":
                raise UsageError("usage: %nbkit login openai")
            login(getpass.getpass("OpenAI API key (kept in this kernel's memory only): "), args.provider)
            print("nbkit: API key set for this session (not saved anywhere)")
            return
        if args.provider:
            raise UsageError(f"%nbkit {args.what} takes no further argument")
        if args.what == "help":
            print(HELP)
            return
        if args.what == "methods":
            from nbkit.methods import METHODS, available_methods

            import dataclasses

            for name in available_methods():
                m = METHODS[name]
                options = ", ".join(f"--{f.name.replace('_', '-')} ({f.default})" for f in dataclasses.fields(m.options))
                print(f"{name:14} {m.summary}\n{'':14} lr {m.lr:g}; options: {options or 'none'}")
            return
        if args.what == "samples":
            from nbkit.data import available_samples

            print("\n".join(f"sample:{s}" for s in available_samples()))
            return
        print(listing())


def listing() -> str:
    """The session's prompts, runs and loaded models, as text (no heavy imports)."""
    from nbkit.session import available_runs, current

    lines = ["prompts:"] + [f"  {n}: {', '.join(sorted(p.variables)) or 'no variables'}"
                            + (f"; choices {', '.join(p.choices)}" if p.choices else "") for n, p in current().prompts.items()]
    lines += ["runs:"] + [f"  {n}" for n in available_runs()]
    loaded = [m for kind in ("decoder", "encoder", "seq2seq") for m in current().loaded(kind)]
    lines += ["models loaded:"] + [f"  {m!r}" for m in loaded]
    return "\n".join(lines)


HELP = """nbkit magics  ($name in a magic line is replaced by the notebook variable; {{ }} is left to Jinja)

  %%prompt NAME [--target T] [--choices a,b] [--system S] [--shots K] [--run --data D --limit N] [-o VAR]
      define a Jinja2 prompt from the cell body; --run generates on N rows (or, with no
      variables and no --data, sends the text to the model like a chat cell)
  %tune --prompt NAME --data D [--method M] [--epochs E] [--lr LR] [--dev 0.1] [--name RUN] [--resume] [-o VAR]
      fine-tune with lora, qlora, dora, ia3, prompt-tuning, p-tuning, prefix-tuning or full;
      a live widget in Jupyter, plain lines under papermill; returns a Run
  %tune --prompt A --data DA --prompt B --data DB [--weights 1,2] ...
      multi-task: one adapter on several prompts/data sets, weighted loss, each task's loss logged
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
  %nbkit [list|methods|samples|help]
      list prompts, runs and loaded models; the tuning methods; the sample data sets
  %nbkit login openai
      ask for an API key (not echoed, kept in memory only) for --model openai:NAME

Data: sample:NAME, a .csv/.jsonl/.json/.parquet file, hf:ID[:CONFIG], or a variable name.
Models: smollm2-135m (embedded), a local directory, a hub id, or openai:NAME [--base-url URL]
        (any OpenAI-compatible server; `nbkit serve --run RUN` serves tuned runs that way)
Each magic's own help: %tune?  %evaluate?  %%prompt?"""
