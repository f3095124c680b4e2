"""Running a checkpoint forward for statistics: whole on the device, or one decoder layer at a time.

The transformers model is built with empty (meta) parameters and filled from the safetensors
through converter.io, so nothing is loaded twice and a model larger than the device still runs.
Whole mode loads every layer once and runs the base model per batch. Layer mode first runs the
model with every decoder layer replaced by a recorder, capturing each layer's keyword arguments
(masks, rotary tables, which differ by layer type in Gemma 2/3 and Qwen) and the embedded input;
then it loads one layer, pushes every batch's hidden states through it, frees it and goes on.
Both run the same modules on the same tensors in the same order, so their results agree to
float tolerance, and peak device memory in layer mode is one layer plus the hidden states.

A `Probe` sees the input of every `mlp.down_proj` (act_fn(gate(x)) * up(x)) and may replace it,
which is how scoring records act² and how candidate plans mask dropped FFN channels. A
`LinearInputs` callback sees (after any probe) the input of every linear layer of every decoder
layer, named by its weight's checkpoint name: what llama.cpp's importance matrix sums.
In a mixture-of-experts layer the probe sees the shared expert's down_proj input (if any), and an
`ExpertInputs` callback sees the experts module's inputs (converter.score.expert_blocks finds
it, converter.score.expert_weights stacks its parameters from per-expert checkpoint tensors).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from converter.errors import ConvertError
from converter.source import Source
from converter.io.dtypes import TORCH_DTYPE_NAMES, raw_to_torch
from converter.score.expert_blocks import dense_down, moe_blocks
from converter.score.expert_weights import read_moe_parameter

FIT_FRACTION = 0.6


LinearInputs = Callable[[int, str, torch.Tensor], None]  # (batch index, weight name, input)
# (batch index, layer, hidden states [positions, hidden], top-k experts, their router weights)
ExpertInputs = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], None]


class Probe(Protocol):
    def begin_batch(self, index: int) -> None: ...

    def down_input(self, layer: int, x: torch.Tensor) -> torch.Tensor | None: ...


def pick_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConvertError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs, float32 on CPUs (where bf16 matmuls are slow and buy nothing)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def fits(source: Source, device: torch.device) -> bool:
    """Whether the whole model in the compute dtype fits comfortably in the device's free memory."""
    params = sum(info.nbytes // info.itemsize for info in source.checkpoint)
    size = params * torch.tensor([], dtype=compute_dtype(device)).element_size()
    return size < FIT_FRACTION * free_memory(device)


class _Recorder(nn.Module):
    """Stands in for a decoder layer during capture: records its arguments, changes nothing."""

    def __init__(self, layer: nn.Module, store: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        super().__init__()
        self.store = store
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.store.append((args, kwargs))
        return hidden_states


class ModelRunner:
    """A model skeleton over a checkpoint that runs batches whole or layer by layer."""

    def __init__(self, source: Source, device: torch.device, layerwise: bool) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.source = source
        self.device = device
        self.dtype = compute_dtype(device)
        self.layerwise = layerwise
        try:
            config = AutoConfig.from_pretrained(str(source.folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConvertError(f"config.json cannot be loaded by transformers ({exc})", source.folder) from exc
        if source.spec.family_record.text_config is not None:
            config = config.get_text_config()  # a multimodal checkpoint: score its language model
        config.use_cache = False
        # The language model's tensors sit under this prefix in the checkpoint (multimodal checkpoints).
        self.prefix = source.spec.family_record.text_prefix
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
        self.config = config
        # The decoder body (embed_tokens, layers, norm); typed Any because its submodules are
        # reached by attribute, which nn.Module types as Tensor | Module.
        self.base: Any = model.model
        self.layers: nn.ModuleList = model.model.layers
        self.embed_device = torch.device("cpu") if layerwise else device
        self._move_buffers(model)
        self._load(self.base.embed_tokens, self.prefix + "model.embed_tokens.", self.embed_device)
        self._load(self.base.norm, self.prefix + "model.norm.", device)
        if not layerwise:
            for index, layer in enumerate(self.layers):
                self._load(layer, f"{self.prefix}model.layers.{index}.", device)
        self._probe: Probe | None = None
        downs = [(index, dense_down(layer)) for index, layer in enumerate(self.layers)]
        self._handles = [down.register_forward_pre_hook(self._hook(index)) for index, down in downs if down is not None]
        self.moe = moe_blocks(self.layers)
        self._on_experts: ExpertInputs | None = None
        self._handles += [block.experts.register_forward_pre_hook(self._experts_hook(block.layer), with_kwargs=True)
                          for block in self.moe]
        self._on_linear: LinearInputs | None = None
        self._batch = 0
        self.linear_widths: dict[str, int] = {}  # weight name -> input width, for every hooked linear
        for index, layer in enumerate(self.layers):
            for path, module in layer.named_modules():
                if isinstance(module, nn.Linear):
                    name = f"{self.prefix}model.layers.{index}.{path}.weight"
                    self.linear_widths[name] = module.in_features
                    self._handles.append(module.register_forward_pre_hook(self._linear_hook(name)))

    def _move_buffers(self, model: nn.Module) -> None:
        for module in model.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None and buf.device.type != "meta":
                    module._buffers[name] = buf.to(self.device)
        emb = self.base.embed_tokens
        for name, buf in list(emb._buffers.items()):
            if buf is not None:
                emb._buffers[name] = buf.to(self.embed_device)

    def _hook(self, layer: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if self._probe is None:
                return None
            out = self._probe.down_input(layer, args[0])
            return None if out is None else (out, *args[1:])
        return hook

    def _experts_hook(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._on_experts is not None:
                names = ("hidden_states", "top_k_index", "top_k_weights")
                values = (*args, *(kwargs[n] for n in names[len(args):]))
                self._on_experts(self._batch, layer, values[0], values[1], values[2])
        return hook

    def _linear_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self._on_linear is not None:
                self._on_linear(self._batch, name, args[0])
        return hook

    def weight(self, name: str, rows: Sequence[int] | None = None) -> torch.Tensor:
        """One tensor (or some rows of it) from the checkpoint, in the compute dtype, on the device."""
        ckpt = self.source.checkpoint
        info = ckpt.info(name)
        if info.dtype not in TORCH_DTYPE_NAMES:
            raise ConvertError(f"tensor '{name}' has dtype {info.dtype}, which scoring cannot read", ckpt.folder)
        if rows is None:
            data, shape = ckpt.raw(name), info.shape
        else:
            data, shape = ckpt.raw_rows(name, rows), (len(rows), *info.shape[1:])
        return raw_to_torch(data, info.dtype, shape).to(device=self.device, dtype=self.dtype)

    def _load(self, module: nn.Module, prefix: str, device: torch.device) -> None:
        for pname, param in list(module.named_parameters()):
            owner_name, _, leaf = pname.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            name = prefix + pname
            if name in self.source.checkpoint:
                info = self.source.checkpoint.info(name)
                tensor = raw_to_torch(self.source.checkpoint.raw(name), info.dtype, info.shape)
            else:
                stacked = read_moe_parameter(self.source.checkpoint, name)
                if stacked is None:
                    raise ConvertError(f"tensor '{name}' is missing from the checkpoint", self.source.folder)
                if stacked.shape != param.shape:
                    raise ConvertError(f"the experts' tensors for '{name}' stack to {tuple(stacked.shape)}, the "
                                       f"config says {tuple(param.shape)}", self.source.folder)
                tensor = stacked
            owner._parameters[leaf] = nn.Parameter(tensor.to(device=device, dtype=self.dtype), requires_grad=False)

    def _free(self, module: nn.Module) -> None:
        for pname, param in list(module.named_parameters()):
            owner_name, _, leaf = pname.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner._parameters[leaf] = nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device="meta"),
                                                   requires_grad=False)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base.embed_tokens(ids.to(self.embed_device)).to(self.device)

    @torch.inference_mode()
    def run(self, batches: Sequence[torch.Tensor], probe: Probe | None = None,
            on_output: Callable[[int, torch.Tensor], None] | None = None,
            progress: Callable[[float], None] | None = None, on_linear: LinearInputs | None = None,
            on_experts: ExpertInputs | None = None) -> None:
        """Run every batch of ids [B, T] (right-padded); on_output gets the final normed hidden states,
        on_linear every decoder-layer linear's input, on_experts every MoE layer's experts' inputs."""
        self._probe = probe
        self._on_linear = on_linear
        self._on_experts = on_experts
        try:
            if self.layerwise:
                self._run_layerwise(batches, probe, on_output, progress)
            else:
                for index, ids in enumerate(batches):
                    self._batch = index
                    if probe is not None:
                        probe.begin_batch(index)
                    hidden = self.base(inputs_embeds=self._embed(ids), use_cache=False).last_hidden_state
                    if on_output is not None:
                        on_output(index, hidden)
                    if progress is not None:
                        progress(1)
        finally:
            self._probe = None
            self._on_linear = None
            self._on_experts = None

    def _run_layerwise(self, batches: Sequence[torch.Tensor], probe: Probe | None,
                       on_output: Callable[[int, torch.Tensor], None] | None,
                       progress: Callable[[float], None] | None) -> None:
        originals = list(self.layers)
        states: list[torch.Tensor] = []
        calls: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] = []
        norm = self.base.norm
        self.base.norm = nn.Identity()
        try:
            for ids in batches:
                store: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
                for index, layer in enumerate(originals):
                    self.layers[index] = _Recorder(layer, store)
                # Recorders pass their input through and the norm is off, so the base model returns
                # the first layer's input: the embedding with any factor the model applies to it.
                states.append(self.base(inputs_embeds=self._embed(ids), use_cache=False).last_hidden_state)
                calls.append(store)
        finally:
            for index, layer in enumerate(originals):
                self.layers[index] = layer
            self.base.norm = norm
        for index, layer in enumerate(originals):
            self._load(layer, f"{self.prefix}model.layers.{index}.", self.device)
            try:
                for b, hidden in enumerate(states):
                    self._batch = b
                    if probe is not None:
                        probe.begin_batch(b)
                    args, kwargs = calls[b][index]
                    states[b] = layer(hidden, *args, **kwargs)
            finally:
                self._free(layer)
            if progress is not None:
                progress(len(batches) / len(originals))
        for b, hidden in enumerate(states):
            if on_output is not None:
                on_output(b, norm(hidden))

    def output_rows(self, rows: Sequence[int] | None) -> torch.Tensor:
        """The output projection (lm_head, or the tied embedding) restricted to `rows`."""
        embed = self.prefix + "model.embed_tokens.weight"
        name = embed if self.source.spec.tied_embeddings else self.prefix + "lm_head.weight"
        if name not in self.source.checkpoint:
            name = embed
        embedding = self.base.embed_tokens.weight
        if rows is None and name == embed and embedding.device == self.device:
            return embedding  # tied and already loaded on the device: no second copy
        return self.weight(name, rows)

    def logits(self, hidden: torch.Tensor, out_rows: torch.Tensor) -> torch.Tensor:
        """Logits over the given output rows, in float32, with the logits divisor and the final soft-capping of
        families that apply them."""
        logits = (hidden @ out_rows.T).float()
        divisor = self.source.spec.family_record.logits_divisor
        if divisor is not None:
            logits = logits / float(getattr(self.config, divisor))
        applied = "final_logit_softcapping" in self.source.spec.family_record.softcapping
        cap = getattr(self.config, "final_logit_softcapping", None) if applied else None
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits
