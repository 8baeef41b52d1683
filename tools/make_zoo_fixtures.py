#!/usr/bin/env python3
"""Fixtures of the model zoo and of weight conversion (tests/zoo.rs, tests/convert.rs), made with
open_clip 3.3 and transformers from files that clipcu's own `convert` wrote:

    cargo build --release && /tmp/torchenv/bin/python tools/make_zoo_fixtures.py

writes tests/fixtures/models/zoo/:
  - param-counts.json: every config in assets/models -> open_clip's parameter count
    (sum of numel over `model.parameters()`: logit_scale counted, BatchNorm running stats not),
    each model built on the meta device (no memory, no weights download);
  - hf-keys.json: the state_dict keys and shapes of transformers' `CLIPModel` for tiny-vit, and
    hf-config.json: `CLIPConfig.to_dict()` of that model's config, both built here independently
    of clipcu (the config as tools/make_fixtures.py builds it);
  - hf/model.safetensors + hf/config.json (+ hf/config-quickgelu.json): tests/fixtures/models/
    tiny-vit.safetensors converted by `clipcu convert` open_clip -> clipcu -> hf (GELU, and the
    same weights as a QuickGELU model), each loaded here with `CLIPModel.from_pretrained` (no
    missing or unexpected keys); hf-embeds.safetensors: the image and text features transformers
    computes from them for the inputs of tiny-vit-io.safetensors (checked here against
    open_clip's within 1e-5);
  - open_clip-embeds.safetensors: tiny-vit-hf.safetensors converted by `clipcu convert`
    hf -> clipcu -> open_clip, loaded by open_clip's `load_state_dict(strict=True)`, its
    embeddings (GELU and QuickGELU models); the converted tensors equal the original bit for bit;
  - (checked, not written) tiny-rn converted to open_clip names loads with strict=True in open_clip
    and gives tiny-rn-io's embeddings.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import open_clip
import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
OUT = os.path.join(MODELS, "zoo")
BIN = os.environ.get("CLIPCU_BIN", os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "clipcu"))


def load_cfg(name):
    with open(os.path.join(ROOT, "assets", "models", name + ".json")) as f:
        return json.load(f)


def clipcu(*args):
    subprocess.run([BIN, *args], check=True, stdout=subprocess.DEVNULL)


def param_counts():
    counts = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "assets", "models", "*.json"))):
        name = os.path.basename(path)[:-5]
        with open(path) as f:
            cfg = json.load(f)
        with torch.device("meta"):
            m = open_clip.model.CLIP(**cfg)
        counts[name] = sum(p.numel() for p in m.parameters())
    with open(os.path.join(OUT, "param-counts.json"), "w") as f:
        json.dump(counts, f, indent=1, sort_keys=True)
        f.write("\n")


def hf_config(cfg, act):
    from transformers import CLIPConfig
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    return CLIPConfig(
        text_config=dict(vocab_size=t["vocab_size"], hidden_size=t["width"], intermediate_size=4 * t["width"],
                         num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                         max_position_embeddings=t["context_length"], hidden_act=act, eos_token_id=2,
                         bos_token_id=0, pad_token_id=1, layer_norm_eps=1e-5, projection_dim=cfg["embed_dim"]),
        vision_config=dict(hidden_size=v["width"], intermediate_size=4 * v["width"], num_hidden_layers=v["layers"],
                           num_attention_heads=v["width"] // v.get("head_width", 64), image_size=v["image_size"],
                           patch_size=v["patch_size"], hidden_act=act, layer_norm_eps=1e-5,
                           projection_dim=cfg["embed_dim"]),
        projection_dim=cfg["embed_dim"])


def features(out):
    return getattr(out, "pooler_output", out)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    from transformers import CLIPConfig, CLIPModel
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: cargo build --release first (or set CLIPCU_BIN)")

    param_counts()

    cfg = load_cfg("tiny-vit")
    hc = hf_config(cfg, "gelu")
    sd = CLIPModel(hc).state_dict()
    with open(os.path.join(OUT, "hf-keys.json"), "w") as f:
        json.dump({k: list(v.shape) for k, v in sorted(sd.items())}, f, indent=1)
        f.write("\n")
    with open(os.path.join(OUT, "hf-config.json"), "w") as f:
        json.dump(hc.to_dict(), f, indent=1, sort_keys=True, default=str)
        f.write("\n")

    io = load_file(os.path.join(MODELS, "tiny-vit-io.safetensors"))
    images, ids = io["images"], io["text_ids"].to(torch.long)
    original = load_file(os.path.join(MODELS, "tiny-vit.safetensors"))
    tmp = tempfile.mkdtemp()
    try:
        # clipcu -> HF, GELU and QuickGELU (the same weights; only config.json differs)
        hf_dir = os.path.join(OUT, "hf")
        shutil.rmtree(hf_dir, ignore_errors=True)
        os.makedirs(hf_dir)
        embeds = {}
        for suffix, qg in [("", False), ("-quickgelu", True)]:
            c = dict(cfg, quick_gelu=qg)
            cfg_path = os.path.join(tmp, f"tiny-vit{suffix}.json")
            with open(cfg_path, "w") as f:
                json.dump(c, f)
            ours = os.path.join(tmp, f"clipcu{suffix}.safetensors")
            clipcu("convert", os.path.join(MODELS, "tiny-vit.safetensors"), "--to", "clipcu", "--config", cfg_path, "--out", ours)
            d = os.path.join(tmp, f"hf{suffix}")
            os.makedirs(d)
            clipcu("convert", ours, "--to", "hf", "--out", os.path.join(d, "model.safetensors"))
            model, info = CLIPModel.from_pretrained(d, output_loading_info=True)
            assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
            model.eval()
            assert model.config.text_config.hidden_act == ("quick_gelu" if qg else "gelu")
            with torch.no_grad():
                hi = features(model.get_image_features(pixel_values=images))
                ht = features(model.get_text_features(input_ids=ids))
            for a, what in [(hi, "image"), (ht, "text")]:
                err = rel(a, io[f"{what}_embeds{suffix}"])
                assert err < 1e-5, f"transformers' {what} features of clipcu's HF file differ from open_clip: {err}"
            embeds[f"image_embeds{suffix}"] = hi.contiguous()
            embeds[f"text_embeds{suffix}"] = ht.contiguous()
            if not qg:
                shutil.copy(os.path.join(d, "model.safetensors"), os.path.join(hf_dir, "model.safetensors"))
                shutil.copy(os.path.join(d, "config.json"), os.path.join(hf_dir, "config.json"))
            else:
                a = load_file(os.path.join(d, "model.safetensors"))
                b = load_file(os.path.join(hf_dir, "model.safetensors"))
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                shutil.copy(os.path.join(d, "config.json"), os.path.join(hf_dir, "config-quickgelu.json"))
        save_file(embeds, os.path.join(OUT, "hf-embeds.safetensors"))

        # HF -> clipcu -> open_clip names, loaded by open_clip
        embeds = {}
        for suffix, qg in [("", False), ("-quickgelu", True)]:
            c = dict(cfg, quick_gelu=qg)
            cfg_path = os.path.join(tmp, f"tiny-vit{suffix}.json")
            ours = os.path.join(tmp, f"from-hf{suffix}.safetensors")
            oc = os.path.join(tmp, f"open_clip{suffix}.safetensors")
            clipcu("convert", os.path.join(MODELS, "tiny-vit-hf.safetensors"), "--to", "clipcu", "--config", cfg_path, "--out", ours)
            clipcu("convert", ours, "--to", "open_clip", "--out", oc)
            sd = load_file(oc)
            assert sd.keys() == original.keys() and all(torch.equal(sd[k], original[k]) for k in sd)
            model = open_clip.model.CLIP(**c).eval()
            model.load_state_dict(sd, strict=True)
            with torch.no_grad():
                embeds[f"image_embeds{suffix}"] = model.encode_image(images).contiguous()
                embeds[f"text_embeds{suffix}"] = model.encode_text(ids).contiguous()
            for what in ["image", "text"]:
                err = rel(embeds[f"{what}_embeds{suffix}"], io[f"{what}_embeds{suffix}"])
                assert err < 1e-6, err
        save_file(embeds, os.path.join(OUT, "open_clip-embeds.safetensors"))

        # a ModifiedResNet in open_clip names (no num_batches_tracked: torch fills it in), loaded
        # strictly by open_clip, gives tiny-rn-io's embeddings (checked only, nothing written)
        rn = os.path.join(tmp, "rn.safetensors")
        clipcu("convert", os.path.join(MODELS, "tiny-rn.safetensors"), "--to", "open_clip", "--config", "tiny-rn", "--out", rn)
        model = open_clip.model.CLIP(**load_cfg("tiny-rn")).eval()
        model.load_state_dict(load_file(rn), strict=True)
        rio = load_file(os.path.join(MODELS, "tiny-rn-io.safetensors"))
        with torch.no_grad():
            assert rel(model.encode_image(rio["images"]), rio["image_embeds"]) < 1e-5
            assert rel(model.encode_text(rio["text_ids"].to(torch.long)), rio["text_embeds"]) < 1e-5
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(OUT, "**"), recursive=True) if os.path.isfile(p))
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
