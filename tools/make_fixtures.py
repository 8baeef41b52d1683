#!/usr/bin/env python3
"""Reference fixtures for the model tests, made with open_clip (and transformers for HF names).

    /tmp/torchenv/bin/python tools/make_fixtures.py        # writes tests/fixtures/models/

For each tiny config in assets/models (tiny-vit with GELU, the same weights with QuickGELU, tiny-rn):
  - random weights (open_clip init, then every tensor perturbed so that no LayerNorm/BatchNorm is
    the identity and every bias matters; BatchNorm running statistics randomised),
    saved with open_clip key names: <name>.safetensors
  - inputs (random preprocessed images, token-id rows with the EOT = largest id at random positions)
    and open_clip's encode_image / encode_text outputs (fp32, unnormalised): <name>-io.safetensors
For tiny-vit also:
  - the same weights under Hugging Face CLIPModel names, checked here to give open_clip's outputs
    through transformers' own CLIPModel: tiny-vit-hf.safetensors
  - two small image files and open_clip's embeddings of them through its own preprocessing
  - (init-stats.json, the initialisation statistics, comes from tools/make_init_stats.py)
Everything is seeded; the Rust tests read these files and never need Python.
"""
import json
import os
import sys

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "models")
EOT = 999  # the largest id of the tiny vocab (1000)


def load_cfg(name):
    with open(os.path.join(ROOT, "assets", "models", name + ".json")) as f:
        return json.load(f)


def build(cfg, quick_gelu=False):
    cfg = dict(cfg)
    cfg["quick_gelu"] = quick_gelu or cfg.get("quick_gelu", False)
    return open_clip.model.CLIP(**cfg).eval()


def perturb(model, gen):
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif name == "logit_scale":
                continue
            else:
                scale = max(float(t.float().std()) if t.numel() > 1 else 0.0, 0.05)
                t.add_(0.3 * scale * torch.randn(t.shape, generator=gen))


def token_rows(gen, n, ctx):
    ids = torch.zeros(n, ctx, dtype=torch.long)
    for i in range(n):
        end = int(torch.randint(1, ctx, (1,), generator=gen))
        ids[i, 0] = EOT - 1  # stands in for SOT (second-largest id)
        ids[i, 1:end] = torch.randint(1, EOT - 1, (end - 1,), generator=gen)
        ids[i, end] = EOT
    return ids


def to_hf(sd, cfg):
    """open_clip ViT state dict -> Hugging Face CLIPModel names."""
    out = {}
    vw, tw = cfg["vision_cfg"]["width"], cfg["text_cfg"]["width"]
    out["logit_scale"] = sd["logit_scale"]
    out["text_model.embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = sd["positional_embedding"]
    out["text_model.final_layer_norm.weight"] = sd["ln_final.weight"]
    out["text_model.final_layer_norm.bias"] = sd["ln_final.bias"]
    out["text_projection.weight"] = sd["text_projection"].t().contiguous()
    out["vision_model.embeddings.class_embedding"] = sd["visual.class_embedding"]
    out["vision_model.embeddings.patch_embedding.weight"] = sd["visual.conv1.weight"]
    out["vision_model.embeddings.position_embedding.weight"] = sd["visual.positional_embedding"]
    out["vision_model.pre_layrnorm.weight"] = sd["visual.ln_pre.weight"]
    out["vision_model.pre_layrnorm.bias"] = sd["visual.ln_pre.bias"]
    out["vision_model.post_layernorm.weight"] = sd["visual.ln_post.weight"]
    out["vision_model.post_layernorm.bias"] = sd["visual.ln_post.bias"]
    out["visual_projection.weight"] = sd["visual.proj"].t().contiguous()
    for src, dst, w in [("transformer", "text_model.encoder", tw), ("visual.transformer", "vision_model.encoder", vw)]:
        i = 0
        while f"{src}.resblocks.{i}.ln_1.weight" in sd:
            s, d = f"{src}.resblocks.{i}", f"{dst}.layers.{i}"
            qkv_w, qkv_b = sd[f"{s}.attn.in_proj_weight"], sd[f"{s}.attn.in_proj_bias"]
            for j, n in enumerate("qkv"):
                out[f"{d}.self_attn.{n}_proj.weight"] = qkv_w[j * w:(j + 1) * w].contiguous()
                out[f"{d}.self_attn.{n}_proj.bias"] = qkv_b[j * w:(j + 1) * w].contiguous()
            out[f"{d}.self_attn.out_proj.weight"] = sd[f"{s}.attn.out_proj.weight"]
            out[f"{d}.self_attn.out_proj.bias"] = sd[f"{s}.attn.out_proj.bias"]
            for a, b in [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]:
                out[f"{d}.{b}.weight"] = sd[f"{s}.{a}.weight"]
                out[f"{d}.{b}.bias"] = sd[f"{s}.{a}.bias"]
            i += 1
    return out


def hf_model(cfg, act):
    from transformers import CLIPConfig, CLIPModel
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    hc = CLIPConfig(
        text_config=dict(vocab_size=t["vocab_size"], hidden_size=t["width"], intermediate_size=4 * t["width"],
                         num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                         max_position_embeddings=t["context_length"], hidden_act=act, eos_token_id=2,
                         bos_token_id=None, pad_token_id=None,
                         layer_norm_eps=1e-5),
        vision_config=dict(hidden_size=v["width"], intermediate_size=4 * v["width"], num_hidden_layers=v["layers"],
                           num_attention_heads=v["width"] // v.get("head_width", 64), image_size=v["image_size"],
                           patch_size=v["patch_size"], hidden_act=act, layer_norm_eps=1e-5),
        projection_dim=cfg["embed_dim"])
    return CLIPModel(hc).eval()


def contiguous(sd):
    return {k: v.detach().contiguous().clone() for k, v in sd.items() if v.is_floating_point()}


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(20261127)

    for name in ["tiny-vit", "tiny-rn"]:
        cfg = load_cfg(name)
        torch.manual_seed(7)
        model = build(cfg)
        perturb(model, gen)
        sd = contiguous(model.state_dict())
        save_file(sd, os.path.join(OUT, f"{name}.safetensors"))
        s, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
        images = torch.randn(3, 3, s, s, generator=gen)
        ids = token_rows(gen, 4, ctx)
        variants = [("", False)] + ([("-quickgelu", True)] if name == "tiny-vit" else [])
        io = {"images": images, "text_ids": ids.to(torch.float32)}
        for suffix, qg in variants:
            m = build(cfg, quick_gelu=qg)
            m.load_state_dict(model.state_dict())
            with torch.no_grad():
                io[f"image_embeds{suffix}"] = m.encode_image(images)
                io[f"text_embeds{suffix}"] = m.encode_text(ids)
        save_file(io, os.path.join(OUT, f"{name}-io.safetensors"))

        if name == "tiny-vit":
            hf = hf_model(cfg, "gelu")
            hsd = to_hf(model.state_dict(), cfg)
            missing, unexpected = hf.load_state_dict(hsd, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            assert not missing and not unexpected, (missing, unexpected)
            with torch.no_grad():
                hi = hf.get_image_features(pixel_values=images)
                ht = hf.get_text_features(input_ids=ids)
            hi = getattr(hi, "pooler_output", hi)
            ht = getattr(ht, "pooler_output", ht)
            for a, b, what in [(hi, io["image_embeds"], "image"), (ht, io["text_embeds"], "text")]:
                err = float((a - b).norm() / b.norm())
                assert err < 1e-5, f"HF {what} features differ from open_clip: {err}"
            save_file(contiguous(hsd), os.path.join(OUT, "tiny-vit-hf.safetensors"))

            # open_clip's own resize of the positional-embedding grid (4x4 -> 6x6 and -> 3x3)
            resized = {}
            for size in (48, 24):
                c2 = json.loads(json.dumps(cfg))
                c2["vision_cfg"]["image_size"] = size
                sd2 = dict(model.state_dict())
                open_clip.model.resize_pos_embed(sd2, build(c2))
                resized[f"positional_embedding_{size}"] = sd2["visual.positional_embedding"].contiguous()
            save_file(resized, os.path.join(OUT, "tiny-vit-posembed.safetensors"))

            # image files through open_clip's own preprocessing
            rng = np.random.default_rng(5)
            files = {"photo-80x60.png": (80, 60), "photo-50x70.jpg": (50, 70)}
            pre = open_clip.image_transform(s, is_train=False)
            tensors = []
            for fname, (w, h) in files.items():
                yy, xx = np.mgrid[0:h, 0:w]
                img = np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, (xx * yy) % 256], -1).astype(np.float64)
                img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
                path = os.path.join(OUT, fname)
                Image.fromarray(img).save(path, quality=95) if fname.endswith(".jpg") else Image.fromarray(img).save(path)
                tensors.append(pre(Image.open(path)))
            batch = torch.stack(tensors)
            with torch.no_grad():
                emb = model.encode_image(batch)
            save_file({"pixels": batch, "image_embeds": emb}, os.path.join(OUT, "tiny-vit-files.safetensors"))

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
