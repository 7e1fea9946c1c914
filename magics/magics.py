"""``%%prompt``, ``%tune``, ``%evaluate`` and ``%nbkit``.

Each magic parses its line with ``magic_arguments`` (quotes work, bad flags
raise ``UsageError``, ``%tune?`` shows the help), calls one function of the
nbkit API, displays the result and binds it with ``-o VAR``. Lines are not
variable-expanded: ``--target "{{ label }}"`` reaches nbkit intact. The flags
are declared in :mod:`.options`, ``%evaluate``'s modes live in :mod:`.evaluating`
and ``%nbkit``'s texts in :mod:`.listing`.
"""

from __future__ import annotations

import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import magic_arguments

from .evaluating import evaluate_mode
from .listing import HELP, listing, methods_text, objectives_text, power_text
from .options import (EVALUATE_ARGUMENTS, NBKIT_ARGUMENTS, PROMPT_ARGUMENTS, arguments, expand, help_first,
                      split_csv, tune_arguments, tune_keywords)
from .progress import callbacks


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

    @help_first
    @magic_arguments()
    @arguments(PROMPT_ARGUMENTS)
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
            cell, name=args.name, target=args.target, choices=split_csv(args.choices),
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

    @help_first
    @magic_arguments()
    @arguments(tune_arguments())
    @no_var_expand
    @line_magic
    def tune(self, line):
        """Fine-tune a model on a prompt and a data set; returns a Run.

        Example::

            %tune --prompt intent --data sample:intent --method lora --epochs 3 --dev 0.1 -o run

        Each setting below is a field of ``nbkit.config.TuneConfig``, which declares its default and
        help once for ``nbkit.tune``, job files and this magic. Method options default to the
        method's own; ``%nbkit methods`` lists every method with its options.
        """
        from nbkit.training import tune

        args = self._parse(self.tune, line)
        if args.task == "generation" and not args.prompt:
            raise UsageError("--prompt is needed: which prompt formats the data?")
        prompts = args.prompt[0] if args.prompt and len(args.prompt) == 1 else args.prompt
        datas = args.data if len(args.data) > 1 else args.data[0]
        keywords = tune_keywords(args)
        if args.seeds is not None:
            if args.seeds < 1:
                raise UsageError(f"--seeds must be a positive number of runs, got {args.seeds}")
            first = keywords.pop("seed")
            keywords["seeds"] = list(range(first, first + args.seeds))
        run = tune(prompts, datas, task=args.task, resume=args.resume, overwrite=args.overwrite, export=args.export,
                   namespace=self.shell.user_ns, callbacks=callbacks(args.progress, per_run=args.seeds is not None),
                   **keywords)
        if args.export:
            print(f"wrote {run}; run it with: nbkit tune --config {run}  "
                  f"(or torchrun --nproc-per-node N -m nbkit tune --config {run})")
        return self._bind(args.output, run)

    @help_first
    @magic_arguments()
    @arguments(EVALUATE_ARGUMENTS)
    @no_var_expand
    @line_magic
    def evaluate(self, line):
        """Evaluate prompts and tuned runs side by side; returns a Report.

        Example::

            %evaluate --prompt intent --run intent-lora --data sample:intent -o report

        ``--search`` ranks candidate prompts instead, ``--versus`` compares prompting with
        fine-tuning in one table. A flag left out takes the default of the function it goes to:
        ``nbkit.evaluate``, ``nbkit.search_prompts`` or ``nbkit.prompt_vs_finetune``.
        """
        args = self._parse(self.evaluate, line)
        return self._bind(args.output, evaluate_mode(args, self.evaluate.parser, self.shell.user_ns))

    @help_first
    @magic_arguments()
    @arguments(NBKIT_ARGUMENTS)
    @no_var_expand
    @line_magic
    def nbkit(self, line):
        """List the session's prompts, runs and loaded models, print help, or log in to an API."""
        args = self._parse(self.nbkit, line)
        if args.what == "power":
            print(power_text(args.provider))
            return
        if args.what == "login":
            import getpass

            from nbkit.models.api import login

            if args.provider != ["openai"]:
                raise UsageError("usage: %nbkit login openai")
            login(getpass.getpass("OpenAI API key (kept in this kernel's memory only): "), args.provider[0])
            print("nbkit: API key set for this session (not saved anywhere)")
            return
        if args.provider:
            raise UsageError(f"%nbkit {args.what} takes no further argument")
        if args.what == "samples":
            from nbkit.data import available_samples

            print("\n".join(f"sample:{s}" for s in available_samples()))
            return
        print({"help": lambda: HELP, "methods": methods_text, "objectives": objectives_text,
               "list": listing}[args.what]())
