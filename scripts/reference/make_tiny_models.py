"""Build tiny random BERT-family checkpoints and record reference outputs.

Usage (from the repository root, in a virtual environment with the packages
pinned in scripts/reference/requirements.txt installed; CPU-only torch is
enough):

    python scripts/reference/make_tiny_models.py

This is run by a developer when the reference data has to change, not by CI.
Everything is deterministic (fixed seeds), so re-running it with the pinned
versions rewrites the same files. It writes, under tests/data/hf/:

  tiny-bert/        BertModel, WordPiece tokenizer, plus a sentence-transformers
                    layout (modules.json, 1_Pooling/config.json with mean
                    pooling, 2_Normalize listed in modules.json).
  tiny-distilbert/  DistilBertModel, same WordPiece tokenizer, plain Hugging
                    Face directory (no sentence-transformers files).
  tiny-xlmr/        XLMRobertaModel, Unigram tokenizer with a Metaspace
                    pre-tokenizer.

Each directory holds config.json, model.safetensors, tokenizer.json,
tokenizer_config.json (as save_pretrained writes them) and:

  reference.json         {"sentences", "token_ids" (with special tokens,
                         unpadded), "transformers_version", "torch_version",
                         "layers", "hidden", "heads", ...}
  reference.safetensors  F32 tensors:
      hidden.{k}     k = 0..L, [total_tokens, H]; k = 0 is the embedding
                     output. Rows are the real (unpadded) tokens of every
                     sentence, concatenated in sentence order.
      attention.{k}  k = 0..L-1, [sum_i heads*T_i*T_i]; per sentence the
                     attention probabilities [heads, T_i, T_i] restricted to
                     its real tokens (rows and columns), flattened row-major,
                     concatenated in sentence order.
      pooled_mean    [n, H] mean of the last hidden state over real tokens.
      pooled_cls     [n, H] last hidden state, row 0 of each sentence.
      embeddings     [n, H] (tiny-bert only) SentenceTransformer.encode output
                     for the directory: mean pooling then L2 normalisation.

The outputs come from the batched, padded forward pass (eval mode, float32,
eager attention). The script checks them against one unpadded forward pass
per sentence and against a fresh reload of the saved directory, and prints
the largest differences seen.

Both tokenizers are learnt from the multilingual text in corpus.py (which
contains the reference sentences, so no reference token is unknown):

  WordPiece  the pipeline of an uncased BERT tokenizer.json (BertNormalizer
             with lowercasing and accent stripping, BertPreTokenizer,
             [CLS] $A [SEP]); [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4;
             800 entries, learnt by learn_wordpiece_vocab() below.
  Unigram    tokenizers' UnigramTrainer, 600 pieces, NFKC, Metaspace
             pre-tokenizer, <s> $A </s>; <s>=0 <pad>=1 </s>=2 <unk>=3
             <mask>=4; scores made reproducible by canonical_unigram_pieces().

Weights are drawn with a large spread (matrices N(0, 0.2); biases N(0, 0.1);
LayerNorm weights 1 + N(0, 0.1)) so an implementation that skips a bias, a
LayerNorm or an embedding table cannot match by accident.
"""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    DistilBertConfig,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import REFERENCE_SENTENCES, TRAINING_SENTENCES  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_ROOT = REPO_ROOT / "tests" / "data" / "hf"

# The WordPiece alphabet alone (every character plus its ## form) takes
# about 540 entries, so it gets room for a few hundred merges.
WORDPIECE_VOCAB_SIZE = 800
UNIGRAM_VOCAB_SIZE = 600
HIDDEN = 32
LAYERS = 2
HEADS = 4
INTERMEDIATE = 64
MAX_LEN = 64  # tokens per sequence, special tokens included

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def training_corpus():
    return list(TRAINING_SENTENCES) + list(REFERENCE_SENTENCES)


# --------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------


def learn_wordpiece_vocab(normalizer, pre_tokenizer):
    """WordPiece vocabulary by BPE-style merges, ties broken in a fixed order.

    This is what the tokenizers library's WordPieceTrainer does, except that
    the trainer breaks equal pair counts by hash-map order, so its vocabulary
    changes from run to run. Here equal counts go to the lexicographically
    smallest pair, which makes the vocabulary reproducible. Words are split
    by the tokenizer's own normaliser and pre-tokeniser.
    """
    counts = {}
    for sentence in training_corpus():
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence)):
            counts[word] = counts.get(word, 0) + 1
    words = [[w[0]] + ["##" + c for c in w[1:]] for w in sorted(counts)]
    freqs = [counts[w] for w in sorted(counts)]

    vocab = list(BERT_SPECIALS)
    # Every character on its own (as the trainer's alphabet has), then the
    # continuation forms that occur, then the merges.
    chars = {c for w in counts for c in w}
    symbols = chars | {sym for word in words for sym in word}
    alphabet = sorted(symbols, key=lambda t: (t.startswith("##"), t))
    vocab += [t for t in alphabet if t not in vocab]
    seen = set(vocab)
    while len(vocab) < WORDPIECE_VOCAB_SIZE:
        pairs = {}
        for word, f in zip(words, freqs):
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + f
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merged = a + b[2:]
        for word in words:
            i = 0
            while i < len(word) - 1:
                if word[i] == a and word[i + 1] == b:
                    word[i : i + 2] = [merged]
                i += 1
        if merged not in seen:
            seen.add(merged)
            vocab.append(merged)
    return {t: i for i, t in enumerate(vocab)}


def train_wordpiece():
    """WordPiece with the pipeline of an uncased BERT tokenizer.json."""
    # strip_accents=None follows lowercase, as in bert-base-uncased and
    # all-MiniLM-L6-v2: text is NFD-decomposed and combining marks dropped.
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = learn_wordpiece_vocab(normalizer, pre_tokenizer)
    tok = Tokenizer(
        models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100)
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.add_special_tokens(BERT_SPECIALS)
    for i, t in enumerate(BERT_SPECIALS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]"))
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def canonical_unigram_pieces(pieces):
    """Make the trained Unigram vocabulary the same on every run.

    The trainer's EM sums in parallel, so scores differ between runs in the
    last digits; rounding to 1e-6 removes that. The characters that pruning
    dropped but that must stay in the vocabulary are appended by the trainer
    with placeholder scores (its lowest score minus steps of 1e-4) in
    hash-set order, so which character gets which score changes between
    runs. Every single character scored below the lowest longer piece gets
    one shared score instead, 0.01 below that piece, so they remain the last
    resort. Pieces are then sorted by score, ties by text, after the special
    tokens.
    """
    specials = pieces[: len(XLMR_SPECIALS)]
    assert [p for p, _ in specials] == XLMR_SPECIALS, specials
    rest = [(p, round(s, 6)) for p, s in pieces[len(XLMR_SPECIALS) :]]
    lowest_long = min(s for p, s in rest if len(p) > 1)
    floor = round(lowest_long - 0.01, 6)
    rest = [(p, floor if len(p) == 1 and s < lowest_long else s) for p, s in rest]
    rest.sort(key=lambda ps: (-ps[1], ps[0]))
    return [[p, s] for p, s in specials] + [[p, s] for p, s in rest]


def train_unigram():
    """Unigram with an XLM-R-like pipeline (Metaspace, <s> $A </s>)."""
    tok = Tokenizer(models.Unigram())
    # XLM-R's own normaliser is a precompiled SentencePiece charsmap (NFKC
    # based); plain NFKC plus the same space squeeze stands in for it.
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=UNIGRAM_VOCAB_SIZE,
        special_tokens=XLMR_SPECIALS,
        unk_token="<unk>",
        max_piece_length=16,
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer)
    state = json.loads(tok.to_str())
    state["model"]["vocab"] = canonical_unigram_pieces(state["model"]["vocab"])
    tok = Tokenizer.from_str(json.dumps(state))
    for i, t in enumerate(XLMR_SPECIALS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


def hf_wordpiece(tok):
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_LEN,
    )


def hf_unigram(tok):
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=MAX_LEN,
    )


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def randomise(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            lname = name.lower()
            if "layernorm" in lname or "layer_norm" in lname:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * noise)
                else:
                    p.copy_(0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def build_model(config, seed):
    torch.manual_seed(seed)
    model = AutoModel.from_config(config, attn_implementation="eager")
    randomise(model, seed)
    return model.eval()


def bert_config(vocab_size):
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        hidden_act="gelu",
        max_position_embeddings=MAX_LEN,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        initializer_range=0.2,
        pad_token_id=0,
    )


def distilbert_config(vocab_size):
    return DistilBertConfig(
        vocab_size=vocab_size,
        dim=HIDDEN,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=INTERMEDIATE,
        activation="gelu",
        max_position_embeddings=MAX_LEN,
        sinusoidal_pos_embds=False,
        initializer_range=0.2,
        pad_token_id=0,
    )


def xlmr_config(vocab_size):
    return XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        hidden_act="gelu",
        # Positions start at padding_idx + 1 = 2, so 64 tokens need 66 rows.
        max_position_embeddings=MAX_LEN + 2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        initializer_range=0.2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )


# --------------------------------------------------------------------------
# Reference outputs
# --------------------------------------------------------------------------


def forward(model, ids_list, pad_id):
    """Batched forward pass with right padding; returns the HF output."""
    n = len(ids_list)
    t_max = max(len(x) for x in ids_list)
    input_ids = torch.full((n, t_max), pad_id, dtype=torch.long)
    mask = torch.zeros((n, t_max), dtype=torch.long)
    for i, ids in enumerate(ids_list):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    with torch.no_grad():
        return model(
            input_ids=input_ids,
            attention_mask=mask,
            output_hidden_states=True,
            output_attentions=True,
            return_dict=True,
        )


def collect(out, lengths):
    """Reference tensors (real tokens only) from a batched output."""
    tensors = {}
    for k, h in enumerate(out.hidden_states):
        rows = [h[i, :t] for i, t in enumerate(lengths)]
        tensors[f"hidden.{k}"] = torch.cat(rows, 0)
    for k, a in enumerate(out.attentions):
        parts = [a[i, :, :t, :t].reshape(-1) for i, t in enumerate(lengths)]
        tensors[f"attention.{k}"] = torch.cat(parts, 0)
    last = out.hidden_states[-1]
    tensors["pooled_mean"] = torch.stack([last[i, :t].mean(0) for i, t in enumerate(lengths)])
    tensors["pooled_cls"] = torch.stack([last[i, 0] for i in range(len(lengths))])
    return {k: v.detach().to(torch.float32).contiguous().numpy() for k, v in tensors.items()}


def max_diff(a, b):
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def per_sentence(model, ids_list, pad_id):
    """The same tensors from one unpadded forward pass per sentence."""
    parts = [collect(forward(model, [ids], pad_id), [len(ids)]) for ids in ids_list]
    return {k: np.concatenate([p[k] for p in parts], 0) for k in parts[0]}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dir_size(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def write_sentence_transformers_layout(out_dir):
    """modules.json / 1_Pooling / sentence_bert_config.json as in all-MiniLM-L6-v2."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {
        "word_embedding_dimension": HIDDEN,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out_dir / "1_Pooling").mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "modules.json", modules)
    write_json(out_dir / "1_Pooling" / "config.json", pooling)
    write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": MAX_LEN, "do_lower_case": False})


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def sentence_transformers_embeddings(out_dir, sentences):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out_dir), device="cpu")
    names = [type(m).__name__ for m in st]
    assert names == ["Transformer", "Pooling", "Normalize"], names
    emb = st.encode(sentences, convert_to_numpy=True, batch_size=len(sentences))
    return np.ascontiguousarray(emb, dtype=np.float32)


def make(name, config, raw_tok, hf_tok, seed, st_layout=False):
    out_dir = OUT_ROOT / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    model = build_model(config, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    hf_tok.save_pretrained(out_dir)
    assert Tokenizer.from_file(str(out_dir / "tokenizer.json")).to_str() == raw_tok.to_str()
    if st_layout:
        write_sentence_transformers_layout(out_dir)

    sentences = list(REFERENCE_SENTENCES)
    enc = raw_tok.encode_batch(sentences)
    ids_list = [e.ids for e in enc]
    lengths = [len(x) for x in ids_list]
    assert max(lengths) <= MAX_LEN, lengths
    assert len(set(lengths)) > 1

    pad_id = config.pad_token_id
    tensors = collect(forward(model, ids_list, pad_id), lengths)

    # Checks: padding invariance, and a reload of the saved directory with
    # the stock Auto classes gives the same token ids and outputs.
    d_single = max_diff(tensors, per_sentence(model, ids_list, pad_id))
    reloaded_tok = AutoTokenizer.from_pretrained(out_dir)
    reloaded_ids = [reloaded_tok(s)["input_ids"] for s in sentences]
    assert reloaded_ids == ids_list, "AutoTokenizer disagrees with tokenizer.json"
    reloaded = AutoModel.from_pretrained(out_dir, attn_implementation="eager").eval()
    d_reload = max_diff(tensors, collect(forward(reloaded, ids_list, pad_id), lengths))
    assert d_reload == 0.0, d_reload
    assert d_single < 1e-4, d_single

    unk = raw_tok.token_to_id("[UNK]" if "[UNK]" in raw_tok.get_vocab() else "<unk>")
    unk_counts = [x.count(unk) for x in ids_list]

    if st_layout:
        emb = sentence_transformers_embeddings(out_dir, sentences)
        mean = tensors["pooled_mean"]
        ours = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        d_st = float(np.max(np.abs(emb - ours)))
        assert d_st < 1e-5, d_st
        tensors["embeddings"] = emb
    else:
        d_st = None

    save_file(tensors, str(out_dir / "reference.safetensors"), metadata={"format": "np"})
    info = {
        "sentences": sentences,
        "token_ids": ids_list,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "layers": LAYERS,
        "hidden": HIDDEN,
        "heads": HEADS,
        "total_tokens": sum(lengths),
        "pad_token_id": pad_id,
        "model_sha256": sha256(out_dir / "model.safetensors"),
        "tokenizer_sha256": sha256(out_dir / "tokenizer.json"),
    }
    write_json(out_dir / "reference.json", info)

    size = dir_size(out_dir)
    assert size < 650_000, size
    print(
        f"{name}: vocab {raw_tok.get_vocab_size()}, tokens {sum(lengths)} "
        f"(lengths {min(lengths)}..{max(lengths)}), unk per sentence {unk_counts}, "
        f"max |batched - single| {d_single:.2e}, reload diff {d_reload:.1e}"
        + (f", max |st.encode - ours| {d_st:.2e}" if d_st is not None else "")
        + f", {size} bytes"
    )


def main():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    wordpiece = train_wordpiece()
    unigram = train_unigram()

    make("tiny-bert", bert_config(wordpiece.get_vocab_size()), wordpiece,
         hf_wordpiece(wordpiece), seed=1, st_layout=True)
    make("tiny-distilbert", distilbert_config(wordpiece.get_vocab_size()), wordpiece,
         hf_wordpiece(wordpiece), seed=2)
    make("tiny-xlmr", xlmr_config(unigram.get_vocab_size()), unigram,
         hf_unigram(unigram), seed=3)


if __name__ == "__main__":
    main()
