#!/usr/bin/env python3
"""Baseline for `cargo bench --bench tokenizer`: open_clip.tokenize on 10,000 captions made from the
same pieces as benches/tokenizer.rs (same mix, not the same draw). Prints texts per second.

    /tmp/torchenv/bin/python tools/bench_tokenizer_py.py
"""
import random, time
from open_clip import tokenizer as oct
rng = random.Random(7)
subjects = ["dog","cat","woman","man","child","red car","bicycle","plate of pasta","mountain lake","city street","wooden table","old lighthouse","group of friends","golden retriever puppy","vintage camera","bowl of ramen","snowy forest","sailboat","skateboarder","bride"]
verbs = ["sitting on","running across","standing next to","looking at","lying in","walking along","parked near","floating on","jumping over","covered with"]
places = ["the beach","a sunny park","the kitchen counter","a busy market","the river bank","an empty road","the living room floor","a field of flowers","the snow","a rooftop at night"]
styles = ["","Stock photo: ","Close-up of ","HD wallpaper - ","Vintage illustration of ","Photo of "]
extras = ["Café de Flore in Paris","naïve art print","“Summer vibes” ☀️","Tom &amp; Jerry","it’s a beautiful day","Zürich Hauptbahnhof","東京タワー at dusk","São Paulo skyline","Ðáñïêâ – 2019","Москва, Красная площадь","100% cotton T-shirt (XL)","🐶🐱 best friends"]
caps=[]
for _ in range(10000):
    s=f"{rng.choice(styles)}a {rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(places)}"
    if rng.randrange(8)==0: s+=", "+rng.choice(extras)
    if rng.randrange(3)==0: s+=f" {1990+rng.randrange(35)}"
    caps.append(s+".")
oct.tokenize(caps[:100])
for _ in range(2):
    t=time.perf_counter(); oct.tokenize(caps); dt=time.perf_counter()-t
    print(f"open_clip.tokenize 10k captions: {dt*1000:.0f} ms, {10000/dt:.0f} texts/s")
