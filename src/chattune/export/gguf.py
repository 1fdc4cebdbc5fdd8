"""The merged model for local runners: a GGUF file for llama.cpp and Ollama, and Ollama's Modelfile (tools.export).

The GGUF file holds the merged weights in f16 or q8_0 (or Q4_K_M / Q5_K_M through llama.cpp's own quantizer), the
tokenizer with its special tokens and llama.cpp's name for its pre-tokenizer, and the chat template. Tensor names come from the gguf library's map, blocks from its quantizer; what is done here is the
glue: llama.cpp's row order for the query and key projections (each head's two rotary halves interleaved, which
transformers undoes when it reads the file), and the precision of the tensors q8_0 cannot take (norms, and
matrices whose rows its blocks of 32 do not divide, stay in float32 / f16, as llama.cpp's own converter keeps
them).
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

from chattune.common.errors import ExportError

TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
# What only llama.cpp's own quantizer makes (k-quants, chosen per tensor): written as f16 first, then quantized.
LLAMA_CPP_TYPES = ("q4_k_m", "q5_k_m")
Q8_BLOCK = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]




def llama_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """A query or key projection's rows in llama.cpp's order: per head, the two rotary halves interleaved."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def encoded(data: np.ndarray, kind: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    if data.ndim == 1:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if kind == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
        return gguf.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def vocabulary(tokenizer_dir: Path):
    """Llama's SentencePiece-style BPE (byte fallback: TinyLlama) or byte-level BPE (GPT-2 style: SmolLM2, tiny)."""
    model = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]
    if model["type"] != "BPE":
        raise ExportError(f"export: a {model['type']} tokenizer ({tokenizer_dir}/tokenizer.json) has no GGUF "
                          "vocabulary here; BPE tokenizers (byte-level or with byte fallback) do")
    return gguf.LlamaHfVocab(tokenizer_dir) if model.get("byte_fallback") else gguf.BpeVocab(tokenizer_dir)


def pre_tokenizer(tokenizer_dir: Path, source_gguf: Path | None) -> str:
    """llama.cpp's name for how the tokenizer splits text before its BPE merges (tokenizer.ggml.pre). A wrong name
    splits words otherwise than training did: SmolLM2 written as "default" had llama.cpp split "I've" into three
    tokens where the model learned two. The source GGUF's own name where the base model came from one (llama.cpp's
    converter identified it there); "default" for a SentencePiece-style vocabulary with byte fallback, which
    llama.cpp splits on spaces alone whatever the name; "gpt-2" for GPT-2's byte-level split. Other splits are
    refused rather than guessed."""
    if source_gguf is not None:
        field = gguf.GGUFReader(source_gguf).fields.get("tokenizer.ggml.pre")
        if field is not None:
            return bytes(field.parts[field.data[0]]).decode()
    described = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    if described["model"].get("byte_fallback"):
        return "default"
    split = described.get("pre_tokenizer") or {}
    if split.get("type") == "ByteLevel" and split.get("use_regex", True):
        return "gpt-2"
    raise ExportError(f"export: no llama.cpp name is known here for the pre-tokenizer {json.dumps(split)[:200]} "
                      f"({tokenizer_dir}/tokenizer.json); a GGUF with a wrong one would split text otherwise")


def llama_quantize(source: Path, target: Path, kind: str) -> None:
    """`source` (an f16 GGUF) quantized by llama.cpp's own quantizer (llama-cpp-python's binding) into `target`."""
    import ctypes

    llama_cpp = llama_cpp_or_refuse(kind)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0 or not target.exists():
        raise ExportError(f"export: llama.cpp's quantizer failed on {source} (status {status})")


def llama_cpp_or_refuse(kind: str):
    try:
        import llama_cpp
    except ImportError:
        raise ExportError(f"export: --gguf-type {kind} is made by llama.cpp's own quantizer, which is not installed: "
                          "pip install llama-cpp-python (it builds llama.cpp; docs/tests.md), or use f16 or q8_0") \
            from None
    return llama_cpp


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer_dir: Path, vocab_size: int, pre: str) -> None:
    vocab = vocabulary(tokenizer_dir)
    tokens, scores, types = (list(column) for column in zip(*vocab.all_tokens()))
    # Special tokens that the vocabulary lists as ordinary entries are control tokens to a runner, as to HF.
    for added in json.loads((tokenizer_dir / "tokenizer.json").read_text()).get("added_tokens", []):
        if added["special"]:
            types[added["id"]] = gguf.TokenType.CONTROL
    if len(tokens) > vocab_size:
        raise ExportError(f"export: the tokenizer has {len(tokens)} tokens, the model's embedding {vocab_size}")
    for index in range(len(tokens), vocab_size):  # embedding rows no token uses
        tokens.append(f"[PAD{index}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(tokenizer_dir, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=vocab_size) \
        .add_to_gguf(writer, quiet=True)


def write_gguf(model, tokenizer_dir: Path, path: Path, kind: str, name: str, pre: str) -> dict[str, str]:
    """Write the merged float32 `model` (a LlamaForCausalLM) to `path`, its tokenizer split as `pre` says
    (pre_tokenizer); return {tensor: type} of the tensors kept above `kind`'s precision (f16 or q8_0)."""
    config = model.config
    if config.model_type != "llama":
        raise ExportError(f"export: GGUF export knows Llama models; this one is {config.model_type!r}")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_file_type(TYPES[kind])
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    add_tokenizer(writer, tokenizer_dir, config.vocab_size, pre)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    kept = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads the output head from token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"export: no GGUF name for the tensor {hf_name}")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = llama_rows(data, heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = llama_rows(data, kv_heads)
        data, raw = encoded(data, kind)
        if raw.name.lower() != kind:
            kept[name] = raw.name
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    return kept


# --- Ollama ---------------------------------------------------------------------------------------------

SENTINEL = "\x00{}\x00"


def role_turns(tokenizer) -> tuple[dict[str, tuple[str, str]], str]:
    """What the chat template writes around each role's content, and its generation prompt, read off renderings
    of one system, user and assistant message in turn. Only a template that renders message by message
    (each rendering extends the one before) can be written as a Modelfile TEMPLATE; others are refused."""
    roles = ("system", "user", "assistant")
    messages = [{"role": role, "content": SENTINEL.format(role)} for role in roles]
    rendered = [""] + [tokenizer.apply_chat_template(messages[:n], tokenize=False) for n in range(1, len(roles) + 1)]
    turns = {}
    for n, role in enumerate(roles):
        before, now = rendered[n], rendered[n + 1]
        if not now.startswith(before) or now.count(SENTINEL.format(role)) != 1:
            raise ExportError("export: this chat template does not render message by message; write the "
                              "Modelfile's TEMPLATE by hand")
        prefix, suffix = now[len(before):].split(SENTINEL.format(role))
        turns[role] = (prefix, suffix)
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    if not prompt.startswith(rendered[2]):
        raise ExportError("export: this chat template's generation prompt does not extend the conversation")
    return turns, prompt[len(rendered[2]):]


def modelfile(tokenizer, gguf_name: str, system: str) -> str:
    """Ollama's Modelfile: the GGUF file, the chat template as a Go template over .Messages, the stop tokens and
    the project's system prompt."""
    turns, generation_prompt = role_turns(tokenizer)
    branches = "{{ else ".join(f'if eq .Role "{role}" }}}}{prefix}{{{{ .Content }}}}{suffix}'
                               for role, (prefix, suffix) in turns.items())
    template = f"{{{{ range .Messages }}}}{{{{ {branches}{{{{ end }}}}{{{{ end }}}}{generation_prompt}"
    # the end of a turn, and a special token that opens the user's turn (ChatML's <|im_start|>)
    special = [added.content for added in tokenizer.added_tokens_decoder.values() if added.special]
    stops = [tokenizer.eos_token] + [token for token in special
                                     if token in turns["user"][0] and token != tokenizer.eos_token]
    for text in (template, system):
        if '"""' in text:
            raise ExportError('export: a Modelfile cannot quote text that holds """')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""', *(f'PARAMETER stop "{stop}"' for stop in stops),
             f'SYSTEM """{system}"""']
    return "\n".join(lines) + "\n"
