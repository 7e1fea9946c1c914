"""LoRA's layers with fewer passes over their outputs: the low-rank product added into the base product in place.

peft computes an adapted layer as ``base(x) + lora_B(lora_A(dropout(x))) * scaling``. Besides the two
products that is, in the forward pass, a scaling and a sum over the layer's whole output, each into a fresh
output-sized tensor, and in the backward pass one more scaling of the output's gradient: three passes over
tensors as large as the layer's output (a batch of 8 long examples: 12 MiB for each MLP projection) for a
rank-8 correction. Here the base product's output takes the low-rank product in place, with the scaling
as ``addmm``'s ``alpha``: ``out.addmm_(A x, B^T, alpha=scaling)``. The arithmetic is the same (to float
rounding; exactly when the scaling is a power of two, as with nbkit's default alpha = 2 r), and so are the
gradients: the base product's output is not saved for the backward pass, so writing into it is safe.
Measured in bench/levers.py ("peft's forward" against the defaults).

It takes over only where it is plainly the same computation: a peft LoRA ``Linear`` over a plain
``nn.Linear`` without hooks, with one active adapter, no variant (DoRA runs peft's forward) and no bias on
``B`` (peft's ``lora_bias``), not merged, adapters not disabled (DPO's reference pass disables them), no
per-call arguments (peft's mixed-adapter batches), and the base and low-rank products in one dtype (under
autocast they are). Anything else runs peft's own forward, call by call.
"""

from __future__ import annotations

import types


def fuse_lora(model) -> int:
    """Give each plain LoRA ``Linear`` of ``model`` the fused forward, in place; how many layers got it."""
    import torch
    from peft.tuners.lora.layer import Linear

    fused = 0
    for module in model.modules():
        if type(module) is Linear and type(module.base_layer) is torch.nn.Linear:
            module.forward = types.MethodType(fused_forward, module)
            fused += 1
    return fused


def fused_forward(self, x, *args, **kwargs):
    """``base(x) + scaling * B(A(dropout(x)))`` as one product and one in-place ``addmm``; peft's forward where
    the layer is not in the plain case (see the module's docstring)."""
    import torch

    base, active = self.base_layer, self.active_adapters
    name = active[0] if len(active) == 1 else None
    plain = (name is not None and not args and not kwargs and not self.disable_adapters and not self.merged
             and name in self.lora_A and name not in self.lora_variant
             and not (base._forward_hooks or base._forward_pre_hooks))
    if plain:
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        plain = self.lora_B[name].bias is None and (  # peft's lora_bias=True gives B a bias
            torch.is_autocast_enabled(x.device.type) or x.dtype == base.weight.dtype == a.dtype)
    if not plain:  # the class's forward is peft's: fuse_lora set this one on the instance
        return type(self).forward(self, x, *args, **kwargs)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.nn.functional.linear(flat, base.weight, base.bias)
    low = torch.nn.functional.linear(self.lora_dropout[name](flat), a)
    out.addmm_(low.to(out.dtype), b.t().to(out.dtype), alpha=self.scaling[name])
    return out.view(*x.shape[:-1], out.shape[-1])
