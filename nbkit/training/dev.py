"""What a run measures while it trains: the dev evaluation and each task's loss.

With label choices the dev metric is accuracy by label log-likelihood, the same scoring as
``nbkit.evaluate`` (:func:`nbkit.predict.decoder.predict_decoder`); for free text it is the
loss, with a few generations so a user sees the outputs change.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..encoding import encode_contexts
from ..inference import generate
from ..predict.decoder import predict_decoder
from ..prompts import Prompt


class DevEvaluator:
    """Scores the model being trained on held-out rows: loss, the prompt's metric, sample generations.

    With label choices the metric is accuracy by label log-likelihood (the same scoring as
    ``nbkit.evaluate``); for free text it is the loss, and three rows are generated so a user sees
    the outputs change, not only a number.
    """

    samples = 3

    def __init__(self, prompt: Prompt, rows, examples, pool, tokenizer):
        self.prompt, self.rows, self.examples, self.pool, self.tokenizer = prompt, rows, examples, pool, tokenizer
        self.metric = "accuracy" if prompt.choices else "loss"
        self.greater_is_better = bool(prompt.choices)
        self.last_samples: list[dict] = []

    def __call__(self, model, collate, batch_size: int) -> dict:
        import torch

        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            total, tokens = 0.0, 0
            with torch.no_grad():
                for start in range(0, len(self.examples), batch_size):
                    batch = {k: v.to(device) for k, v in collate(self.examples[start:start + batch_size]).items()}
                    n = int((batch["labels"] != -100).sum())
                    total += float(model(**batch).loss) * n
                    tokens += n
            metrics = {"eval_loss": total / max(tokens, 1)}
            if self.prompt.choices:
                frame = predict_decoder(model, self.tokenizer, self.prompt, self.rows, self.pool, "sum", batch_size)
                metrics["eval_accuracy"] = float(frame["correct"].mean())
            shown = self.rows[:self.samples]
            contexts = encode_contexts(self.prompt, shown, self.tokenizer, self.pool)
            longest = max(len(self.tokenizer(self.prompt.render_target(r), add_special_tokens=False)["input_ids"])
                          for r in shown)
            outputs = generate(model, self.tokenizer, contexts, max_new_tokens=min(longest + 8, 64))
            self.last_samples = [{"input": self.prompt.render(r), "output": o, "expected": self.prompt.render_target(r)}
                                 for r, o in zip(shown, outputs)]
        finally:
            model.train(was_training)
        return metrics


class TaskLosses:
    """The multi-task loss, and each task's own loss for the logs.

    ``loss = sum_t w_t * (sum of token losses of task t) / sum_t w_t * (target tokens of task t)``
    over one batch: with all weights 1 it is the usual mean token loss of a mixed batch, and a
    task of weight 2 pulls on the adapter as if its examples were there twice.
    """

    PREFIX = "task_loss:"

    def __init__(self, names: Sequence[str], weights: Sequence[float]):
        self.names, self.weights = list(names), [float(w) for w in weights]
        self._reset()

    def _reset(self):
        self.sums, self.counts = [0.0] * len(self.names), [0] * len(self.names)

    def __call__(self, logits, labels, task):
        import torch
        import torch.nn.functional as F

        logits = logits[:, -labels.shape[1]:]  # learned prompts put virtual tokens before the input
        targets = labels[:, 1:]
        token = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                ignore_index=-100, reduction="none").view(targets.shape)
        counted = targets != -100
        per_example, tokens = (token * counted).sum(1), counted.sum(1)
        w = torch.tensor(self.weights, device=logits.device)[task]
        loss = (w * per_example).sum() / (w * tokens).sum().clamp(min=1)
        with torch.no_grad():
            for t in task.unique().tolist():
                chosen = task == t
                self.sums[t] += float(per_example[chosen].sum())
                self.counts[t] += int(tokens[chosen].sum())
        return loss

    def flush(self) -> dict:
        """Each task's mean token loss since the last flush (tasks absent from those batches are left out)."""
        out = {f"{self.PREFIX}{n}": s / c for n, s, c in zip(self.names, self.sums, self.counts) if c}
        self._reset()
        return out


class TasksEvaluator:
    """Dev evaluation of a multi-task run: each task scored by its own :class:`DevEvaluator`.

    Logs ``eval_<task>_<metric>`` per task; the selection metric is the mean over tasks (accuracy
    when every task has label choices, else loss), so the best checkpoint is best on average.
    """

    def __init__(self, evaluators: Mapping[str, DevEvaluator]):
        self.evaluators = dict(evaluators)
        self.metric = "accuracy" if all(e.metric == "accuracy" for e in self.evaluators.values()) else "loss"
        self.greater_is_better = self.metric == "accuracy"
        self.examples = [x for e in self.evaluators.values() for x in e.examples]
        self.rows = [r for e in self.evaluators.values() for r in e.rows]
        self.last_samples: list[dict] = []

    def __call__(self, model, collate, batch_size: int) -> dict:
        metrics, samples = {}, []
        for name, evaluator in self.evaluators.items():
            for key, value in evaluator(model, collate, batch_size).items():
                metrics[f"eval_{name}_{key.removeprefix('eval_')}"] = value
            samples += evaluator.last_samples[:1]
        for key in ("loss", "accuracy"):
            values = [metrics[f"eval_{n}_{key}"] for n in self.evaluators if f"eval_{n}_{key}" in metrics]
            if values:
                metrics[f"eval_{key}"] = sum(values) / len(values)
        self.last_samples = samples
        return metrics
