"""Independent NumPy forward pass over the tiny checkpoints in tests/data/hf.

Usage (from the repository root; needs numpy and safetensors only):

    python scripts/reference/numpy_forward.py

A second opinion on reference.safetensors written by make_tiny_models.py:
it re-implements BERT, DistilBERT and XLM-R encoders from the weights alone,
in float64, one unpadded sentence at a time, and prints the largest
difference from each stored tensor (about 1e-6 is float32 rounding). It
also spells out the details an implementation has to get right:

  * BERT: word + position (0..T-1) + token type 0 embeddings, LayerNorm.
  * DistilBERT: word + position (0..T-1), no token type embeddings; every
    LayerNorm uses eps 1e-12, fixed in the model code, not in config.json.
  * XLM-R: like BERT, but positions are padding_idx + 1 + (0..T-1), i.e.
    2..T+1 (Hugging Face counts only non-pad tokens, so right padding does
    not shift them); one token type row; layer_norm_eps 1e-5.
  * Attention: softmax(q k^T / sqrt(head_dim)) v per head, then the output
    projection, residual add and post-LayerNorm; feed-forward with the exact
    (erf) GELU, residual add and LayerNorm.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2] / "tests" / "data" / "hf"
erf = np.vectorize(math.erf)


def layer_norm(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def linear(x, weights, prefix):
    return x @ weights[prefix + ".weight"].T + weights[prefix + ".bias"]


# Parameter names per architecture: (attention q, k, v, out, LayerNorm after
# attention, feed-forward in, out, LayerNorm after feed-forward).
NAMES = {
    "bert": ("encoder.layer.{}.", "attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
             "output.dense", "output.LayerNorm"),
    "distilbert": ("transformer.layer.{}.", "attention.q_lin", "attention.k_lin", "attention.v_lin",
                   "attention.out_lin", "sa_layer_norm", "ffn.lin1", "ffn.lin2", "output_layer_norm"),
}
NAMES["xlm-roberta"] = NAMES["bert"]


def encode(weights, config, ids):
    kind = config["model_type"]
    hidden = config.get("hidden_size", config.get("dim"))
    heads = config.get("num_attention_heads", config.get("n_heads"))
    layers = config.get("num_hidden_layers", config.get("n_layers"))
    eps = 1e-12 if kind == "distilbert" else config["layer_norm_eps"]
    head_dim = hidden // heads
    t = len(ids)

    positions = np.arange(t)
    if kind == "xlm-roberta":
        positions = positions + config["pad_token_id"] + 1
    x = weights["embeddings.word_embeddings.weight"][ids] + weights["embeddings.position_embeddings.weight"][positions]
    if kind != "distilbert":
        x = x + weights["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"], eps)

    states, attentions = [x], []
    layer, q_n, k_n, v_n, o_n, ln1, f1, f2, ln2 = NAMES[kind]
    for i in range(layers):
        p = layer.format(i)
        q, k, v = (linear(x, weights, p + n).reshape(t, heads, head_dim).transpose(1, 0, 2) for n in (q_n, k_n, v_n))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        attentions.append(probs)
        context = (probs @ v).transpose(1, 0, 2).reshape(t, hidden)
        x = layer_norm(linear(context, weights, p + o_n) + x, weights[p + ln1 + ".weight"], weights[p + ln1 + ".bias"], eps)
        ff = linear(gelu(linear(x, weights, p + f1)), weights, p + f2)
        x = layer_norm(ff + x, weights[p + ln2 + ".weight"], weights[p + ln2 + ".bias"], eps)
        states.append(x)
    return states, attentions


def check(model_dir):
    weights = {k: v.astype(np.float64) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    config = json.loads((model_dir / "config.json").read_text())
    info = json.loads((model_dir / "reference.json").read_text())
    ref = load_file(str(model_dir / "reference.safetensors"))

    outs = [encode(weights, config, np.array(ids)) for ids in info["token_ids"]]
    ours = {}
    for k in range(len(outs[0][0])):
        ours[f"hidden.{k}"] = np.concatenate([s[k] for s, _ in outs])
    for k in range(len(outs[0][1])):
        ours[f"attention.{k}"] = np.concatenate([a[k].reshape(-1) for _, a in outs])
    ours["pooled_mean"] = np.stack([s[-1].mean(0) for s, _ in outs])
    ours["pooled_cls"] = np.stack([s[-1][0] for s, _ in outs])
    if "embeddings" in ref:
        m = ours["pooled_mean"]
        ours["embeddings"] = m / np.linalg.norm(m, axis=1, keepdims=True)
    assert sorted(ours) == sorted(ref), (sorted(ours), sorted(ref))
    worst = {k: float(np.max(np.abs(ours[k] - ref[k]))) for k in sorted(ref)}
    print(model_dir.name, " ".join(f"{k}={v:.1e}" for k, v in worst.items()))
    return max(worst.values())


def main():
    worst = max(check(ROOT / name) for name in ("tiny-bert", "tiny-distilbert", "tiny-xlmr"))
    if worst > 1e-5:
        sys.exit(f"largest difference {worst:.2e} is more than float32 rounding")


if __name__ == "__main__":
    main()
