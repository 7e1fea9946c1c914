"""The encoder recipes: contrastive tuning for embeddings, and a classification head.

Both go through the methods registry (``lora`` or ``full``), write the run-config schema
every family writes (:class:`nbkit.config.TuneConfig`), and train in the plain loop
(:mod:`nbkit.training.loop`), which fails and is interrupted as the decoder recipe is.

- ``task="embedding"``: sentence-transformers' ``MultipleNegativesRankingLoss`` on (query,
  positive[, negative]) pairs: each query must be closer to its own positive than to every
  other positive in the batch (in-batch negatives) and to the hard negatives.
- ``task="classification"``: a sequence-classification head on the encoder, labels from the
  prompt's ``choices``, cross-entropy on the prompt's rendered inputs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import TuneConfig, data_spec
from ..data import load_data, samples_dir
from ..errors import ConfigError, DataError
from ..hf import set_seed
from ..methods import BuildContext, method_for
from ..models import family_of, pick_device, resolve
from ..models.encoder import BERT_TARGETS, classifier, features, encoder_source, sentence_transformer, source_of
from ..retrieval import load_corpus, pairs
from ..runs import Run, free_name
from ..session import get_prompt, remember_run
from .loop import Loop, check_loop_settings, shuffled_batches
from .setfit import not_learning, train_setfit
from .tasks import Task, write_inputs

# what the plain loop does not do (yet): refused by name instead of silently ignored
_LOOP = ("max_steps", "grad_accum", "dev", "eval_every", "patience", "save_every", "weights",
         "gradient_checkpointing", "precision")
UNSUPPORTED = {"embedding": _LOOP + ("input",), "classification": _LOOP + ("pooling", "corpus")}
# default learning rates: a head and LoRA learn at 5e-4, all weights of a pretrained encoder move at a
# tenth of that; SetFit's 2e-5 is its package's body learning rate. Contrastive LoRA on sample:search's 80
# held-out queries (MRR@10, base 0.538): 0.629/0.637 at 2e-4 (seeds 0/1), 0.682/0.692 at 5e-4, 0.729 at
# 1e-3 (seed 0), with the default 3 epochs at batch 8 (1 epoch: 0.579; batch 16: 0.610)
LR = {"classification": {"lora": 5e-4, "full": 5e-5, "setfit": 2e-5}, "embedding": {"lora": 1e-3, "full": 2e-5}}


def encoder_config(task: str, prompt, data, settings: Mapping[str, Any], options: Mapping[str, Any]):
    """(config, method, its options) of an encoder run, every setting checked."""
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, str) for d in data):
        raise ConfigError("data", f"task={task!r} trains on one data set, not several")
    cfg = TuneConfig(prompt=getattr(prompt, "name", prompt), data=data_spec(data), task=task,
                     architecture="encoder", options=dict(options), **settings)
    check_loop_settings(cfg, UNSUPPORTED[task], f"with task={task!r} (encoder tuning)")
    spec = method_for(cfg.method, "encoder", "does not apply to an encoder")
    if spec.kind == "setfit" and task != "classification":
        raise ConfigError("method", f"'setfit' trains a classifier (--task classification); --task {task} uses "
                          "lora or full")
    method_options = spec.make_options(cfg.options, "encoder")
    cfg.options, cfg.lr = dataclasses.asdict(method_options), cfg.lr or LR[task][cfg.method]
    return cfg, spec, method_options


def _new_run(cfg: TuneConfig, default: str, overwrite: bool, task: Task, **facts) -> Run:
    run = Run.create(cfg.name or free_name(default), overwrite=overwrite)
    cfg.name = run.name
    write_inputs(run, cfg, [task], **facts)
    return remember_run(run)


def tune_embedding(prompt, data, settings: Mapping[str, Any], options: Mapping[str, Any], *,
                   overwrite: bool = False, namespace=None, callbacks: Sequence = ()) -> Run:
    """Contrastive fine-tuning of a sentence encoder on (query, positive[, negative]) pairs.

    ``positive``/``negative`` may be document ids of the corpus (``sample:search``'s, or
    ``corpus``) or texts. Returns the completed run; its ``adapter/`` holds the LoRA adapter
    (or the whole ``SentenceTransformer``).
    """
    if prompt is not None:
        raise ConfigError("prompt", "is not used by task='embedding': it trains on (query, positive) pairs")
    corpus = settings.get("corpus")  # a spec, or documents held in a variable (recorded as <list>)
    recorded = {**settings, "corpus": None if corpus is None else data_spec(corpus)}
    cfg, spec, method_options = encoder_config("embedding", None, data, recorded, options)
    splits = load_data(data, namespace)
    docs = None
    if corpus is not None or (isinstance(data, str) and _has_corpus(data)):
        docs = load_corpus(corpus if corpus is not None else data, namespace)
    what = repr(data) if isinstance(data, str) else f"the {type(data).__name__} passed in"
    examples = pairs(list(splits["train"]), docs, f"the train split of {what}")
    if any(p is None for _, p, _ in examples):
        raise DataError(f"the train split of {what} has a row without a positive")
    if encoder_source(cfg.model) is None and cfg.pooling is None:
        resolve(cfg.model)  # an unknown name is that error, not this one
        raise ConfigError("task", f"embedding needs a sentence encoder; {cfg.model!r} is a {family_of(cfg.model)} "
                          "model. Give --model minilm-l6, an encoder directory, or --pooling mean|lasttoken to pool "
                          "a decoder's token vectors")
    device = pick_device("auto")
    hard = sum(1 for *_, n in examples if n)
    default = Path(f"{str(data).replace('sample:', '') if isinstance(data, str) else 'data'}-embedding-"
                   f"{cfg.method}").name
    if cfg.name:  # a given name must be free (or replaced) before anything loads; a default one is numbered
        Run.check_create(cfg.name, overwrite=overwrite)
    set_seed(cfg.seed)  # before the LoRA weights are initialised: same seed, same run
    student = sentence_transformer(str(source_of(cfg.model)), device, cfg.pooling)
    student.max_seq_length = cfg.max_length
    student[0].model = spec.build(student[0].model, method_options,
                                  BuildContext(family="encoder", task_type=None, default_targets=BERT_TARGETS))
    task = Task("embedding", None, cfg.data, 1.0, splits, list(splits["train"]), [])
    run = _new_run(cfg, default, overwrite, task, hard_negatives=hard)  # once the model is ready to train
    return Loop(run, student, examples, _contrastive_loss(student, cfg.scale), cfg,
                save=lambda r: _save_encoder(r, student, spec.kind), batches=_hard_first(examples, cfg),
                callbacks=callbacks, facts={"hard_negatives": hard})()


def _contrastive_loss(student, scale: float):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss_fn = MultipleNegativesRankingLoss(student, scale=scale)

    def encode(texts):
        return features(student, texts, student.device)

    def loss_of(batch):
        columns = [encode([q for q, _, _ in batch]), encode([p for _, p, _ in batch])]
        negatives = [n for *_, n in batch]
        if all(negatives):  # hard negatives join the in-batch ones when every row of the batch has one
            columns.append(encode(negatives))
        return loss_fn(columns, None)

    return loss_of


def _hard_first(examples: list, cfg: TuneConfig):
    hard_rows = [e for e in examples if e[2]]
    easy_rows = [e for e in examples if not e[2]]

    def batches(epoch):  # rows with a hard negative batched together, so their negatives are used
        return (shuffled_batches(hard_rows, cfg.batch_size, cfg.seed + epoch)
                + shuffled_batches(easy_rows, cfg.batch_size, cfg.seed + 1000 + epoch))

    return batches


def _has_corpus(data: str) -> bool:
    if data.startswith("sample:"):
        return (samples_dir() / data[len("sample:"):] / "corpus.jsonl").exists()
    return Path(data).is_dir() and (Path(data) / "corpus.jsonl").exists()


def _save_encoder(run: Run, student, kind: str) -> None:
    """LoRA: the transformer's adapter. ``full``: the whole ``SentenceTransformer`` into ``adapter/``, atomically."""
    if kind != "full":
        run.save_adapter(student[0].model)
        return
    run.save_folder(lambda folder: student.save(str(folder)))


def tune_classifier(prompt, data, settings: Mapping[str, Any], options: Mapping[str, Any], *,
                    overwrite: bool = False, namespace=None, callbacks: Sequence = ()) -> Run:
    """A classifier on an encoder, labels from the prompt's ``choices``; the encoder reads the one column
    the template reads, else the rendered prompt (``input`` says which). ``setfit`` (the default) tunes the encoder on same/different-label pairs,
    then fits a logistic-regression head (:mod:`nbkit.training.setfit`); ``lora`` trains adapters plus
    a sequence-classification head with cross-entropy, ``full`` every weight. ``%evaluate --run`` then
    reports the usual classification metrics, so the tuned encoder sits in one table with prompted
    decoders. A run whose training loss ends within 2% of chance says so (``metrics["warning"]``)."""
    prompt, cfg, spec, method_options, source, splits, train, texts, labels = _classification(
        prompt, data, settings, options, namespace)
    default = f"{prompt.name}-{Path(cfg.model).name}-{'setfit' if spec.kind == 'setfit' else 'classifier'}"
    if cfg.name:  # a given name must be free (or replaced) before anything loads; a default one is numbered
        Run.check_create(cfg.name, overwrite=overwrite)
    set_seed(cfg.seed)  # before the head and the LoRA weights are initialised: same seed, same run
    task = Task(prompt.name, prompt, cfg.data, 1.0, splits, train, [])
    if spec.kind == "setfit":
        run = _new_run(cfg, default, overwrite, task)
        return train_setfit(run, cfg, spec, method_options, source, texts, labels, callbacks)
    return _train_head(cfg, spec, method_options, source, texts, labels,
                       lambda: _new_run(cfg, default, overwrite, task), callbacks)


def _classification(prompt, data, settings, options, namespace):
    """Everything a classification run needs, checked before any weights load."""
    if prompt is None:
        raise ConfigError("prompt", "is needed with task='classification': its choices are the labels")
    if isinstance(prompt, (list, tuple)):
        raise ConfigError("prompt", "task='classification' trains one head on one prompt")
    prompt = get_prompt(prompt)
    cfg, spec, method_options = encoder_config("classification", prompt, data, settings, options)
    if not prompt.choices:
        raise ConfigError("choices", f"prompt {prompt.name!r} has no choices; --task classification needs the label "
                          "words (%%prompt NAME --choices a,b,c)")
    source = encoder_source(cfg.model)
    if source is None:
        raise ConfigError("task", f"classification with a head needs an encoder (minilm-l6 or an encoder directory); "
                          f"{cfg.model!r} is not one. For a decoder, tune the prompt without --task")
    splits = load_data(data, namespace)
    train = list(splits["train"])
    columns = splits["train"].column_names
    prompt = prompt.resolve_target(columns)
    prompt.check(columns)
    cfg.input = cfg.input or _default_input(prompt)
    if cfg.input != "prompt" and cfg.input not in columns:
        raise ConfigError("input", f"{cfg.input!r} is neither prompt nor a column of the data; columns: "
                          f"{', '.join(columns)}")
    names = [prompt.render_target(row) for row in train]
    unknown = sorted(set(names) - set(prompt.choices))
    if unknown:
        raise DataError(f"the data has label(s) {', '.join(map(repr, unknown))} that are not among the choices of "
                        f"prompt {prompt.name!r}: {', '.join(prompt.choices)}")
    if len(set(names)) < 2:
        found = f"every training row has the label {names[0]!r}" if names else "the train split is empty"
        raise DataError(f"{found}; a classifier needs rows of at least two labels")
    cfg.labels = list(prompt.choices)
    texts = [prompt.render(row) for row in train] if cfg.input == "prompt" else [str(row[cfg.input]) for row in train]
    return prompt, cfg, spec, method_options, source, splits, train, texts, [cfg.labels.index(n) for n in names]


def _default_input(prompt) -> str:
    """The column itself when the template reads one: an instruction around it is the same words on every
    row, and a mean-pooled sentence vector of it drowns the text (on a held-out home-assistant set,
    0.975 accuracy on the column, 0.80 on the rendered prompt); else the rendered prompt."""
    columns = prompt.input_columns
    return next(iter(columns)) if len(columns) == 1 and not prompt.shots else "prompt"


def _train_head(cfg, spec, method_options, source, texts, labels, new_run, callbacks) -> Run:
    """A sequence-classification head (and LoRA adapters, or every weight) trained with cross-entropy."""
    import torch
    from transformers import AutoTokenizer

    device = pick_device("auto")
    net = spec.build(classifier(source, cfg.labels).to(device), method_options,
                     BuildContext(family="encoder", task_type="SEQ_CLS", default_targets=BERT_TARGETS))
    tokenizer = AutoTokenizer.from_pretrained(source)
    run = new_run()

    def loss_of(batch):
        enc = tokenizer([t for t, _ in batch], padding=True, truncation=True, max_length=cfg.max_length,
                        return_tensors="pt").to(device)
        return net(**enc, labels=torch.tensor([y for _, y in batch], device=device)).loss

    facts: dict = {}

    def save(r):
        r.save_adapter(net, tokenizer if spec.kind == "full" else None)
        warning = not_learning(_last_losses(r), math.log(len(cfg.labels)))
        if warning:
            facts["warning"] = warning

    return Loop(run, net, list(zip(texts, labels)), loss_of, cfg, callbacks=callbacks, save=save, facts=facts)()


def _last_losses(run: Run) -> float | None:
    """The mean loss of the last tenth of the steps: what training ended at."""
    losses = [row["loss"] for row in run.history if isinstance(row.get("loss"), (int, float))]
    if not losses:
        return None
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)
