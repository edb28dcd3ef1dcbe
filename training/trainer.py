"""``WeightedTrainer``: a stock ``transformers.Trainer`` whose loss is the weighted per-sample loss.

Only ``compute_loss`` (the objective), ``get_batch_samples`` (to learn the micro-batch sizes of a
step before its first forward) and ``log`` (weight statistics) change, so the Trainer's schedule,
accumulation, mixed precision, checkpoints, resume, callbacks, DDP and Ray Train all work as usual.
The console output is :class:`training.progress.TrainProgress` instead of the stock raw-dict printers;
:class:`FiniteSteps` stops a run whose loss or gradient norm is not finite before that step is applied.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback

from hardfocus.errors import HardfocusError
from training.progress import TrainProgress
from training.stream import TrainingStream
from training.weighting import StepWeighter, per_sample_nll, per_sample_nll_packed

log = logging.getLogger(__name__)


class WeightedTrainer(Trainer):
    """Trainer over batches from :class:`training.collator.WeightedCollator` (``weight`` column).

    The reported ``loss`` is the plain mean per-sample loss of the step (comparable between
    weighting modes); ``weighted_loss`` and the weight statistics are logged beside it.
    """

    def __init__(self, *args, weighter: StepWeighter, **kwargs):
        super().__init__(*args, **kwargs)
        for stock in (ProgressCallback, PrinterCallback):  # they print each log record as a raw dict
            self.remove_callback(stock)
        self.add_callback(TrainProgress(show_bar=not self.args.disable_tqdm))
        self.add_callback(FiniteSteps(self))
        self.weighter = weighter
        self.loss_is_scaled_for_ga = True  # compute_loss already divides by the step's sample count
        self.model_accepts_loss_kwargs = False  # no token counting: the objective is per sample
        self._reported_loss: torch.Tensor | None = None
        self._step_loss: torch.Tensor | None = None  # sum of the step's micro-batch losses, checked before it is applied
        self._packing_checked = False
        if self.weighter.window > 1 and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            raise ValueError("online_window > 1 rescales param.grad in place, which DeepSpeed and FSDP do not expose")

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches:
            self.weighter.start_step([len(b["weight"]) for b in batches])  # samples: a packed batch is one row
        return batches, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        static = inputs.pop("weight", None)
        labels = inputs.pop("labels")
        sample_index = inputs.pop("sample_index", None)  # packed: each position's sample
        # use_cache=False: no KV cache to fill in training, and with a cache transformers ignores packed positions
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                        position_ids=inputs.get("position_ids"), use_cache=False)
        if sample_index is None:
            losses, _ = per_sample_nll(outputs.logits, labels)
        else:
            losses, _ = per_sample_nll_packed(outputs.logits, labels, sample_index, len(static))
            if not self._packing_checked:
                self._check_packing(model, inputs, labels, sample_index)
        if not model.training:  # evaluation: the plain mean per-sample loss
            loss = losses.mean()
            return (loss, outputs) if return_outputs else loss
        plan = self.weighter.plan(losses.detach(), static)
        if plan.grad_scale != 1.0:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, plan.grad_scale)
        self._reported_loss = plan.mean_loss_share.detach()
        loss = (plan.coef.to(losses.device) * losses).sum()
        checked = loss.detach() + self._reported_loss.to(loss.device)  # NaN or infinite if either is
        self._step_loss = checked if self._step_loss is None else self._step_loss + checked.to(self._step_loss.device)
        return (loss, outputs) if return_outputs else loss

    def _check_packing(self, model, inputs, labels, sample_index) -> None:
        """Once, on the first packed batch of two samples or more: its first two samples alone through the model must
        have the losses they have packed (both without dropout). Not every model's attention keeps packed samples
        apart (OPT and BioGPT build their causal mask without the positions): there each sample would attend to the
        ones before it, and nothing else would say so."""
        first = torch.unique(sample_index)[:2].tolist()
        if len(first) < 2:
            return  # a batch of one sample cannot tell; the next batch will
        self._packing_checked = True
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
                packed = per_sample_nll_packed(logits, labels, sample_index, int(sample_index.max()) + 1)[0]
                for i in first:
                    at = (sample_index == i).to(labels.device)
                    alone = float(per_sample_nll(model(input_ids=inputs["input_ids"][:, at], use_cache=False).logits,
                                                 labels[:, at])[0][0])
                    tolerance = 2e-2 if torch.is_autocast_enabled(logits.device.type) else 1e-4
                    if abs(alone - float(packed[i])) > tolerance * max(1.0, abs(alone)):
                        raise HardfocusError(
                            f"{type(_unwrapped(model)).__name__}'s attention does not keep packed samples apart (a "
                            f"sample's loss is {float(packed[i]):.4f} packed, {alone:.4f} alone): train it with "
                            "--batching grouped"
                        )
        finally:
            model.train(was_training)

    def get_train_dataloader(self):
        """A :class:`training.stream.TrainingStream` yields whole batches: the loader only moves them."""
        if isinstance(self.train_dataset, TrainingStream):
            return torch.utils.data.DataLoader(self.train_dataset, batch_size=None, num_workers=0,
                                               pin_memory=self.args.dataloader_pin_memory)
        return super().get_train_dataloader()

    def training_step(self, model, inputs, num_items_in_batch=None):
        super().training_step(model, inputs, num_items_in_batch)
        return self._reported_loss.to(self.args.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self.weighter.stats.pop())
        if isinstance(self.train_dataset, TrainingStream):  # the Trainer cannot count an endless stream's epochs
            self.state.epoch = round(self.train_dataset.epochs, 4)
        super().log(logs, start_time)


class FiniteSteps(TrainerCallback):
    """Stop a run whose loss or gradient norm is not finite, before the optimizer applies that step.

    A NaN step would make every parameter NaN, and the run would still log, save and "finish" (the
    Trainer's ``logging_nan_inf_filter``, off in :func:`training.build.training_arguments`, even hides
    it in the log). One check per optimizer step, after the gradients are reduced (DDP) and clipped:
    the step's accumulated loss and the per-tensor gradient norms (``torch._foreach_norm``) in one
    device-to-host sync. Under DDP every rank sees the same reduced gradients, so every rank stops at
    the same step. The checkpoints written before that step are kept; no final model or manifest is.
    """

    def __init__(self, trainer: WeightedTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        loss, trainer._step_loss = trainer._step_loss, None
        grads = [_local(p.grad) for p in (model or trainer.model).parameters() if p.grad is not None]
        norms = list(torch._foreach_norm(grads)) if grads else []  # none under DeepSpeed: the loss is checked
        device = loss.device if loss is not None else (norms[0].device if norms else None)
        if device is None:
            return
        values = [v.to(device=device, dtype=torch.float32) for v in ([loss] if loss is not None else []) + norms]
        if bool(torch.isfinite(torch.stack(values)).all()):
            return
        if loss is not None and not bool(torch.isfinite(loss)):
            what = f"the loss is not finite ({float(loss)})"
        else:
            what = f"the gradient norm is not finite ({float(torch.stack(values[1 if loss is not None else 0:]).norm())})"
        raise HardfocusError(
            f"training step {state.global_step + 1} of {state.max_steps}: {what}; stopped before the optimizer applied it, "
            "no model or manifest is written (earlier checkpoints are kept). Check the training data, lower the "
            "learning rate, or train with --precision fp32"
        )


def check_finite_parameters(model: torch.nn.Module, step: int) -> None:
    """A run's model is published only if every weight is finite: a step can still make them inf or NaN after
    finite gradients (an infinite learning rate or weight decay, an overflow in the optimizer's update)."""
    params = [_local(p.detach()) for p in model.parameters()]
    if params and not bool(torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(params)])).all()):
        bad = next(name for name, p in model.named_parameters() if not bool(torch.isfinite(_local(p.detach())).all()))
        raise HardfocusError(
            f"after training step {step} the model's weights are not finite (e.g. {bad}): no model or manifest is "
            "written; check the learning rate, weight decay and data, or train with --precision fp32"
        )


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model under a DDP wrapper."""
    return getattr(model, "module", model)


def _local(grad: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2), else the gradient itself."""
    return grad.to_local() if hasattr(grad, "to_local") else grad


class JsonLogCallback(TrainerCallback):
    """Append every log record (step, loss, weights, lr, eval loss) to a JSON Lines file on rank 0.

    A run that restarts (from its last checkpoint, or from scratch when it died before one) first drops the
    records after the step it restarts at, and a last line a kill cut short, so the file holds each step once,
    as an uninterrupted run writes it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.trim(state.global_step)

    def trim(self, step: int) -> None:
        """Drop the records after ``step`` and a last line a kill cut short."""
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            kept = [line for line in lines if _step(line) <= step]
            if len(kept) < len(lines):
                self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def _step(line: str) -> float:
    """The step of a ``train_log.jsonl`` line; infinity for a line a kill cut short (it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")

