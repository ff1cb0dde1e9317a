"""Hugging Face causal language models in the zoo: ``hf_causal_lm`` wraps ``transformers.AutoModelForCausalLM``.

The wrapped model is the submodule ``model``, untouched: a run's state dict is its state dict with the prefix
``model.``, and features are tapped on its own modules. It describes itself as :class:`~distillab.models.gpt.GPT`
does: token ids (N, L) in, logits (N, L, vocab) out; one feature stage per decoder layer (its module path, e.g.
``model.transformer.h.0`` for GPT-2, ``model.model.layers.0`` for Llama-style models), each (N, L, d);
``head`` is the lm head's module path, so the ``embedding`` feature (``head:input``) is the final normalised
hidden state per token.

Nothing is downloaded: ``path`` is a local folder written by ``save_pretrained``; ``config`` builds a model with
random weights from a dict (``transformers.AutoConfig.for_model(**config)``). ``transformers`` is imported when
a model is built, not when distillab is: install it with ``pip install 'distillab[hf]'``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from distillab.core.errors import UserError
from distillab.models.base import MODELS, FeatureStage, ZooModel
from distillab.models.gpt import check_generation

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# where Hugging Face configs keep the longest sequence their position embeddings cover (GPT-2 maps the first to
# n_positions; older or foreign configs use the others)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
SPECIAL_TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id")


class HFOptionError(UserError, ValueError):
    """Options of ``hf_causal_lm`` that cannot be used (the message names the option and the fix)."""


class HFFolderMissing(UserError, FileNotFoundError):
    """A ``path`` that is not a local Hugging Face model folder."""


class TransformersMissing(UserError, ImportError):
    """``hf_causal_lm`` was asked for but the ``transformers`` package is not installed."""


def _transformers():
    try:
        import transformers
    except ImportError:
        raise TransformersMissing("model 'hf_causal_lm' needs the transformers package: "
                                  "pip install 'distillab[hf]' (or pip install transformers)") from None
    return transformers


def _check_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        what = "does not exist" if not folder.exists() else "holds no config.json"
        raise HFFolderMissing(f"hf_causal_lm: path {str(path)!r} {what}: give a local folder written by "
                              "save_pretrained (nothing is downloaded; to fetch a hub model, save it to a folder "
                              "first)")
    return folder


def _from_folder(path: str | Path) -> nn.Module:
    return _transformers().AutoModelForCausalLM.from_pretrained(_check_folder(path), local_files_only=True)


def _from_config(config: dict, num_classes: int) -> nn.Module:
    """Random weights (drawn from torch's global generator, so a run's seed fixes them). The vocabulary is
    ``num_classes`` unless the dict gives ``vocab_size``; special token ids the dict does not give and that lie
    outside that vocabulary (GPT-2's 50256 at vocabulary 256) are dropped."""
    tf = _transformers()
    if not isinstance(config, dict) or "model_type" not in config:
        raise HFOptionError(f"hf_causal_lm: option config must be a dict with model_type, e.g. {{model_type: gpt2, "
                            f"n_embd: 64, n_layer: 2, n_head: 2, n_positions: 128}}; got {config!r}")
    options = {"vocab_size": num_classes, **config}
    defaults = tf.AutoConfig.for_model(config["model_type"])
    for key in SPECIAL_TOKENS:
        token = getattr(defaults, key, None)
        if key not in config and isinstance(token, int) and token >= options["vocab_size"]:
            options[key] = None
    return tf.AutoModelForCausalLM.from_config(tf.AutoConfig.for_model(**options))


def _config_value(config, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def decoder_layers(model: nn.Module) -> str:
    """Module path of a Hugging Face model's list of decoder layers: the shallowest ``nn.ModuleList`` with one
    entry per hidden layer, preferring one whose entries are the model's own layer class (``_no_split_modules``:
    ``GPT2Block``, ``LlamaDecoderLayer``, ...)."""
    layers = _config_value(model.config, ("num_hidden_layers", "n_layer", "num_layers"))
    lists = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == layers]
    own = set(getattr(model, "_no_split_modules", None) or ())
    preferred = [(path, m) for path, m in lists if type(m[0]).__name__ in own]
    found = preferred or lists
    if not found:
        raise HFOptionError(f"hf_causal_lm: no list of {layers} decoder layers found in {type(model).__name__}: "
                            "this architecture is not supported")
    return min(found, key=lambda c: c[0].count("."))[0]


def module_path(model: nn.Module, module: nn.Module) -> str:
    """The dotted path of ``module`` inside ``model``."""
    return next(path for path, m in model.named_modules() if m is module)


@contextlib.contextmanager
def seeded_from(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Run the body on the global generator of ``device`` seeded from ``generator`` (which advances), then restore
    the global state: HF's sampling draws from the global generator and takes none of its own."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else "cuda"):
        torch.manual_seed(seed)
        yield


class HFCausalLM(ZooModel):
    """A ``transformers`` causal language model (``model``) described as the zoo's language models are.

    num_classes: the vocabulary, which must be the model's. context: the longest sequence read (default and
    upper bound: the config's position limit). dtype: of the weights (float32, bfloat16, float16).
    """

    def __init__(self, model: nn.Module, num_classes: int, context: int | None = None,
                 dtype: str = "float32") -> None:
        super().__init__()
        config = model.config
        vocab = config.vocab_size
        if vocab != num_classes:
            raise HFOptionError(f"hf_causal_lm: the model's vocabulary is {vocab} tokens but the data set's is "
                                f"{num_classes}: use the tokenizer the model was trained with (the data set's "
                                f"tokenizer / data.options.vocab_size={vocab}), or a model config with "
                                f"vocab_size={num_classes}")
        if dtype not in DTYPES:
            raise HFOptionError(f"hf_causal_lm: option dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        limit = _config_value(config, CONTEXT_KEYS)
        if context is not None and (context < 1 or (limit is not None and context > limit)):
            raise HFOptionError(f"hf_causal_lm: option context is {context} but the model's positions cover 1 to "
                                f"{limit} tokens: give context={limit} or less")
        if context is None and limit is None:
            raise HFOptionError(f"hf_causal_lm: {type(config).__name__} records no position limit: give option "
                                "context (the longest sequence the model reads)")
        self.model = model.to(DTYPES[dtype])

        layers = decoder_layers(model)
        width = _config_value(config, ("hidden_size", "n_embd", "d_model"))
        self.context = int(context if context is not None else limit)
        self.num_classes = num_classes
        self.input_shape = (self.context,)
        self.embedding_dim = width
        self.head = f"model.{module_path(model, model.get_output_embeddings())}"
        self.feature_info = [FeatureStage(f"model.{layers}.{i}", width, 1)
                             for i in range(len(model.get_submodule(layers)))]

    def _check(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"hf_causal_lm reads token ids, an integer tensor (N, L); got {ids.dtype} "
                            f"{tuple(ids.shape)}")
        if ids.shape[1] > self.context:
            raise ValueError(f"a sequence of {ids.shape[1]} tokens is longer than the model's context of "
                             f"{self.context}: use a shorter data block (at most {self.context} tokens)")
        if attention_mask is not None and attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the ids' shape "
                             f"{tuple(ids.shape)}")

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (N, L) -> the model's logits (N, L, vocab), in its dtype.

        attention_mask: (N, L) 1 (token) / 0 (padding) for left-padded batches; positions then count real tokens
        only (as :class:`~distillab.models.gpt.GPT` and HF's generate do), so a real token's logits are those of
        its row unpadded.
        """
        self._check(ids, attention_mask)
        if attention_mask is None:
            return self.model(input_ids=ids, use_cache=False).logits
        positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        return self.model(input_ids=ids, attention_mask=attention_mask, position_ids=positions,
                          use_cache=False).logits

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, greedy: bool = False,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 attention_mask: torch.Tensor | None = None, eos_id: int | None = None) -> torch.Tensor:
        """Continue every row of ``ids`` (N, L) by ``max_new_tokens`` tokens: (N, L + max_new_tokens), as
        :meth:`GPT.generate <distillab.models.gpt.GPT.generate>`, through HF's ``generate`` with its KV cache.

        greedy: the most likely token; else sampling from softmax(logits / temperature), restricted to the
        ``top_k`` most likely tokens when given. attention_mask: (N, L) 1/0 for left-padded prompts. eos_id: a
        row that produced it emits eos_id from then on; None: no early stop (the model's own eos is ignored).
        generator: HF's generate takes no torch.Generator and samples from the global one, so the global
        generator is seeded from ``generator`` (advancing it) for the call and restored after: the same generator
        state gives the same tokens, but not the tokens GPT.generate would draw with it. Call ``eval()`` first.
        """
        self._check(ids, attention_mask)
        n, length = ids.shape
        check_generation(length, max_new_tokens, self.context, greedy, temperature)
        if max_new_tokens < 1:
            return ids
        settings = {"max_new_tokens": max_new_tokens, "do_sample": not greedy, "use_cache": True,
                    "eos_token_id": eos_id, "pad_token_id": eos_id if eos_id is not None else 0}
        if not greedy:
            settings.update(temperature=temperature, top_k=top_k or 0, top_p=1.0)  # top_k 0: no restriction
        config = _transformers().GenerationConfig(**settings)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        with seeded_from(generator, ids.device):
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        missing = length + max_new_tokens - out.shape[1]  # every row stopped at eos_id early
        return F.pad(out, (0, missing), value=eos_id) if missing else out


def _folder_given(options: dict) -> bool:
    """Whether the options name a folder of trained weights (then a frozen model needs no checkpoint); a folder
    that is not a saved model is refused now, before the run reads its data."""
    if options.get("path") is None:
        return False
    _check_folder(options["path"])
    return True


def planned_context(options: dict) -> int | None:
    """The context a model built from ``options`` will have, read without building it (the run plan compares it
    with the data's block before any I/O): the ``context`` option, else the position limit of the folder's
    ``config.json`` or of the config dict (its model type's default where the dict gives none and transformers
    is installed). None where it cannot be known yet (a missing folder fails when the model is built)."""
    if options.get("context") is not None:
        return int(options["context"])
    config = options.get("config")
    if options.get("path") is not None:
        file = Path(options["path"]).expanduser() / "config.json"
        try:
            config = json.loads(file.read_text())
        except (OSError, ValueError):
            return None
    if not isinstance(config, dict):
        return None
    value = next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)
    if value is None and "model_type" in config:
        try:
            defaults = _transformers().AutoConfig.for_model(config["model_type"])
        except (ImportError, ValueError, KeyError):
            return None
        value = _config_value(defaults, CONTEXT_KEYS)
    return value


# task "lm": a language model for language-modelling data sets (the run plan checks the pair), built with
# num_classes (the vocabulary) like the GPT zoo.
@MODELS.register("hf_causal_lm", description="Hugging Face causal LM (transformers.AutoModelForCausalLM) from a "
                                             "local folder (path) or a config dict (random weights); needs "
                                             "distillab[hf]", task="lm", context=planned_context,
                 pretrained=lambda options: _folder_given(options))
def hf_causal_lm(num_classes: int, path: str | None = None, config: dict | None = None, context: int | None = None,
                 dtype: str = "float32") -> HFCausalLM:
    """path: a local folder written by ``save_pretrained`` (``local_files_only``: no hub access). config: a dict
    for ``transformers.AutoConfig.for_model`` (e.g. ``{model_type: gpt2, n_embd: 64, n_layer: 2, n_head: 2,
    n_positions: 128}``), random weights; its ``vocab_size`` defaults to ``num_classes``. Exactly one of them.
    Mind the config's defaults: GPT-2's has dropout 0.1 (resid_pdrop, embd_pdrop, attn_pdrop)."""
    if (path is None) == (config is None):
        raise HFOptionError("hf_causal_lm: give exactly one of the options path (a local model folder) and config "
                            f"(a dict for AutoConfig.for_model); got path={path!r}, config={config!r}")
    model = _from_folder(path) if path is not None else _from_config(config, num_classes)
    return HFCausalLM(model, num_classes, context, dtype)
