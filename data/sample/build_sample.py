#!/usr/bin/env python3
"""Regenerate anjeon's bundled sample benchmark in data/sample/.

Written by the anjeon project; licence Apache-2.0 like the project.

What it writes (next to this file):
  assurai_sample.jsonl       84 AssurAI-shaped items (42 harmful + 42 benign)
  media/AS-*.png|wav|mp4     the media of the image/audio/video items
  ksafe_mm_sample.parquet    44 KSAFE-MM-shaped rows (image + text)
from the item definitions in assurai_items.py and ksafe_items.py.

Needs
  Debian packages: espeak-ng sox ffmpeg fonts-nanum
      apt-get update && apt-get install -y espeak-ng sox ffmpeg fonts-nanum
  Python packages: pillow pyarrow
      pip install pillow pyarrow

Run
  python3 data/sample/build_sample.py           # rebuild everything
  python3 data/sample/build_sample.py --check   # only verify what is there

Deterministic: no randomness is used; PNGs carry no metadata, sox runs in
repeatable mode without dither, ffmpeg/x264 run single-threaded with bitexact
flags, and the parquet file is written by pyarrow without pandas metadata.
Reruns with the same tool versions give the same bytes (verified with
espeak-ng 1.51, sox 14.4.2, ffmpeg 5.1, Pillow 13, pyarrow 26).
Override the font with ANJEON_SAMPLE_FONT / ANJEON_SAMPLE_FONT_BOLD.
"""

import argparse
import collections
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # leave no __pycache__ next to the item files

import assurai_items  # noqa: E402
import ksafe_items  # noqa: E402

MEDIA_DIR = os.path.join(HERE, "media")
JSONL_PATH = os.path.join(HERE, "assurai_sample.jsonl")
PARQUET_PATH = os.path.join(HERE, "ksafe_mm_sample.parquet")

FONT = os.environ.get("ANJEON_SAMPLE_FONT", "/usr/share/fonts/truetype/nanum/NanumGothic.ttf")
FONT_BOLD = os.environ.get("ANJEON_SAMPLE_FONT_BOLD", "/usr/share/fonts/truetype/nanum/NanumGothicBold.ttf")

# AssurAI taxonomy. R01-R10 names are confirmed upstream; R11-R35 are this
# project's PROVISIONAL assignment (AssurAI's own names are unconfirmed).
GROUPS = [
    ("Harmful & Violent Content", [
        ("R01", "Supporting Malicious Organized Groups"), ("R02", "Celebrating Suffering"),
        ("R03", "Violent Acts"), ("R04", "Depicting Violence"),
        ("R05", "Weapon Usage & Development"), ("R06", "Military and Warfare")]),
    ("Interpersonal Harm", [
        ("R07", "Harassment"), ("R08", "Hate Speech"), ("R09", "Offensive Language"),
        ("R10", "Perpetuating Harmful Beliefs")]),
    ("Sensitive & Adult Content", [
        ("R11", "Adult Content"), ("R12", "Erotic Content"), ("R13", "Non-Consensual Nudity"),
        ("R14", "Monetized Sexual Content"), ("R15", "Child Endangerment"), ("R16", "Self-harm")]),
    ("Misinformation & Manipulation", [
        ("R17", "Political Persuasion"), ("R18", "Influencing Politics"),
        ("R19", "Deterring Democratic Participation"), ("R20", "Disinformation"),
        ("R21", "Sowing Division"), ("R22", "Misrepresentation"), ("R23", "Defamation")]),
    ("Illegal & Unethical Activities", [
        ("R24", "Fraud"), ("R25", "Academic Dishonesty"),
        ("R26", "Illegal and Regulated Substances"), ("R27", "Illegal Services and Exploitation"),
        ("R28", "Privacy Violation"), ("R29", "Intellectual Property Infringement"),
        ("R30", "Cybersecurity Attacks")]),
    ("Socioeconomic & Cognitive Risks", [
        ("R31", "High-Risk Financial Activities"), ("R32", "Unfair Market Practices"),
        ("R33", "Devaluation of Human Labour"), ("R34", "Loss of User Autonomy"),
        ("R35", "Discrimination in Automated Decisions")]),
]
RISK_NAME = {code: name for _, risks in GROUPS for code, name in risks}
RISK_GROUP = {code: group for group, risks in GROUPS for code, _ in risks}

PROMPT_TYPES = ["direct_request", "indirect_request", "role_play", "hypothetical",
                "expert_consultation", "creative_writing", "jailbreak_attempt", "ordinary_use"]
LABELS = {"compliance", "refusal", "partial"}
MEDIA_EXT = {"image": "png", "audio": "wav", "video": "mp4"}
WANT_MODALITY = {"text": 56, "image": 14, "audio": 8, "video": 6}

VIDEO_W, VIDEO_H, VIDEO_FPS, VIDEO_FRAMES = 320, 240, 8, 24  # 3 s
IMG = 384


# --------------------------------------------------------------------- helpers
def need(tool):
    path = shutil.which(tool)
    if not path:
        sys.exit(f"build_sample.py: '{tool}' not found; apt-get install espeak-ng sox ffmpeg fonts-nanum")
    return path


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   env=dict(os.environ, LC_ALL="C.UTF-8"))


def font(size, bold=False):
    from PIL import ImageFont
    path = FONT_BOLD if bold else FONT
    if not os.path.exists(path):
        sys.exit(f"build_sample.py: font {path} missing; apt-get install fonts-nanum "
                 "or set ANJEON_SAMPLE_FONT / ANJEON_SAMPLE_FONT_BOLD")
    return ImageFont.truetype(path, size)


def wrap(text, fnt, width):
    """Wrap Korean/mixed text to `width` pixels, breaking at spaces when possible."""
    out = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            cand = word if not line else line + " " + word
            if fnt.getlength(cand) <= width:
                line = cand
                continue
            if line:
                out.append(line)
            line = ""
            for ch in word:  # a word wider than the line: break by character
                if fnt.getlength(line + ch) > width and line:
                    out.append(line)
                    line = ""
                line += ch
        out.append(line)
    return out


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# ------------------------------------------------------------ AssurAI media
def render_typographic(spec):
    """FigStep-like typographic image: a title and a numbered list to fill in."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (IMG, IMG), (255, 255, 255))
    d = ImageDraw.Draw(img)
    ft, fl = font(28, bold=True), font(26)
    d.rectangle([0, 0, IMG - 1, 10], fill=(40, 40, 40))
    y = 34
    for line in wrap(spec["title"], ft, IMG - 48):
        d.text((24, y), line, font=ft, fill=(0, 0, 0))
        y += 38
    y += 8
    d.line([24, y, IMG - 24, y], fill=(120, 120, 120), width=2)
    y += 22
    for item in spec["lines"]:
        for line in wrap(item, fl, IMG - 60):
            d.text((36, y), line, font=fl, fill=(0, 0, 0))
            y += 36
        y += 18
    return png_bytes(img.convert("L"))


def make_audio(text, path, tmp):
    raw = os.path.join(tmp, "speech.wav")
    run([need("espeak-ng"), "-v", "ko", "-s", "175", "-w", raw, text])
    # 16 kHz, mono, 16-bit PCM, peak -1 dBFS (espeak's own output peaks at full
    # scale); -R repeatable, -D no dither: same bytes on every run
    run([need("sox"), "-R", "-D", raw, "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", path,
         "remix", "-", "rate", "-h", "16000", "gain", "-n", "-1"])


def make_video(lines, path, tmp):
    """Short H.264 clip: the lines are typed out frame by frame, then held."""
    from PIL import Image, ImageDraw
    fnt = font(21, bold=True)
    wrapped = []
    for line in lines:
        wrapped.extend(wrap(line, fnt, VIDEO_W - 36))
    total = sum(len(l) for l in wrapped)
    reveal_frames = VIDEO_FRAMES - 6
    fdir = os.path.join(tmp, "frames")
    os.makedirs(fdir, exist_ok=True)
    for i in range(VIDEO_FRAMES):
        shown = total if i >= reveal_frames else (total * (i + 1)) // reveal_frames
        img = Image.new("RGB", (VIDEO_W, VIDEO_H), (18, 24, 38))
        d = ImageDraw.Draw(img)
        d.rectangle([0, 0, VIDEO_W - 1, 6], fill=(230, 60, 60))
        y = 34
        left = shown
        for line in wrapped:
            part = line[:max(0, left)]
            left -= len(line)
            d.text((18, y), part, font=fnt, fill=(245, 245, 245))
            y += 40
        # a small progress bar so that every frame differs visibly
        d.rectangle([18, VIDEO_H - 20, 18 + (VIDEO_W - 36) * (i + 1) // VIDEO_FRAMES, VIDEO_H - 14],
                    fill=(120, 160, 230))
        img.save(os.path.join(fdir, f"f{i:03d}.png"))
    run([need("ffmpeg"), "-y", "-loglevel", "error", "-framerate", str(VIDEO_FPS),
         "-i", os.path.join(fdir, "f%03d.png"),
         "-c:v", "libx264", "-preset", "medium", "-crf", "30", "-pix_fmt", "yuv420p",
         "-threads", "1", "-x264-params", "threads=1", "-g", str(VIDEO_FRAMES),
         "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
         "-movflags", "+faststart", path])
    shutil.rmtree(fdir)


# ------------------------------------------------------------- KSAFE scenes
def _person(d, x, y, s, body=(70, 110, 170), skin=(240, 200, 170)):
    d.ellipse([x - 12 * s, y - 12 * s, x + 12 * s, y + 12 * s], fill=skin, outline=(60, 60, 60))
    d.rounded_rectangle([x - 16 * s, y + 14 * s, x + 16 * s, y + 60 * s], radius=int(8 * s), fill=body)


def draw_scene(d, name):
    W, H = IMG, 296  # drawing area above the caption
    if name == "crowd":
        d.rectangle([0, 220, W, H], fill=(200, 200, 190))
        cols = [(200, 80, 80), (80, 140, 200), (90, 170, 110), (210, 160, 60), (150, 100, 180)]
        for i, x in enumerate(range(50, 360, 56)):
            _person(d, x, 120 + (i % 2) * 18, 1.3, body=cols[i % len(cols)])
    elif name == "barricade":
        d.rectangle([0, 230, W, H], fill=(170, 170, 170))
        for i, x in enumerate(range(40, 200, 50)):
            _person(d, x, 130, 1.1, body=(90, 90, 160 + 20 * (i % 2)))
        for x in range(220, 370, 48):
            d.rectangle([x - 18, 120, x + 18, 230], fill=(60, 60, 70))
            d.rectangle([x - 14, 100, x + 14, 118], fill=(40, 40, 50))
        d.rectangle([205, 60, 212, 240], fill=(250, 200, 0))
    elif name == "person":
        d.rectangle([0, 0, W, 170], fill=(150, 200, 240))
        d.rectangle([0, 170, W, 230], fill=(60, 130, 200))
        d.rectangle([0, 230, W, H], fill=(240, 220, 170))
        _person(d, 192, 110, 2.2, body=(250, 150, 60))
    elif name == "scale":
        d.rounded_rectangle([102, 150, 282, 270], radius=18, fill=(220, 220, 230), outline=(90, 90, 100), width=3)
        d.ellipse([152, 165, 232, 245], fill=(255, 255, 255), outline=(90, 90, 100), width=3)
        d.line([192, 205, 215, 180], fill=(200, 40, 40), width=4)
        d.rectangle([60, 40, 324, 120], outline=(120, 120, 120), width=2)
    elif name == "ranking":
        for i, (x, h) in enumerate([(90, 120), (192, 170), (294, 90)]):
            d.rectangle([x - 45, 270 - h, x + 45, 270], fill=(180, 160 + 20 * i, 120), outline=(80, 80, 80))
            shape = [(x - 16, 250 - h), (x + 16, 250 - h), (x, 222 - h)] if i != 1 else None
            if shape:
                d.polygon(shape, fill=(120, 120, 200))
            else:
                d.ellipse([x - 18, 220 - h, x + 18, 256 - h], fill=(120, 120, 200))
    elif name == "robot":
        d.rounded_rectangle([122, 60, 262, 180], radius=20, fill=(190, 200, 215), outline=(80, 90, 110), width=3)
        d.ellipse([150, 100, 178, 128], fill=(40, 160, 220))
        d.ellipse([206, 100, 234, 128], fill=(40, 160, 220))
        d.line([192, 60, 192, 35], fill=(80, 90, 110), width=4)
        d.ellipse([184, 25, 200, 41], fill=(230, 80, 80))
        d.rounded_rectangle([140, 190, 244, 280], radius=12, fill=(170, 180, 200))
        d.polygon([(300, 90), (330, 60), (360, 90), (330, 130)], fill=(230, 70, 110))
        d.ellipse([298, 62, 332, 96], fill=(230, 70, 110))
        d.ellipse([328, 62, 362, 96], fill=(230, 70, 110))
    elif name == "skin":
        d.rectangle([0, 0, W, H], fill=(232, 190, 160))
        d.polygon([(170, 120), (215, 110), (232, 150), (210, 190), (175, 180), (160, 150)], fill=(90, 60, 45))
        d.ellipse([60, 60, 72, 72], fill=(170, 120, 100))
        d.ellipse([300, 220, 310, 230], fill=(170, 120, 100))
    elif name == "subway":
        d.rectangle([0, 0, W, H], fill=(210, 215, 220))
        d.rectangle([0, 40, W, 130], fill=(150, 190, 210))
        for x in range(20, W, 90):
            d.line([x, 40, x, 130], fill=(120, 130, 140), width=4)
        d.rectangle([0, 200, W, 230], fill=(90, 120, 170))
        _person(d, 110, 140, 1.2, body=(100, 100, 100))
        _person(d, 270, 140, 1.2, body=(160, 80, 80))
    elif name == "idcard":
        d.rounded_rectangle([62, 70, 322, 230], radius=14, fill=(235, 240, 250), outline=(70, 90, 140), width=3)
        d.rectangle([82, 100, 152, 190], fill=(200, 205, 215))
        _person(d, 117, 130, 0.8, body=(120, 130, 150))
        for y in (105, 135, 165):
            d.rectangle([170, y, 300, y + 12], fill=(180, 190, 210))
    elif name == "poster":
        d.rectangle([102, 20, 282, 280], fill=(30, 30, 50), outline=(200, 170, 60), width=4)
        d.ellipse([152, 60, 232, 140], fill=(240, 200, 80))
        d.polygon([(110, 240), (192, 150), (274, 240)], fill=(70, 70, 110))
        d.rectangle([125, 250, 259, 262], fill=(200, 170, 60))
    elif name == "drone":
        d.rectangle([0, 0, W, H], fill=(200, 225, 245))
        d.rounded_rectangle([157, 130, 227, 165], radius=10, fill=(60, 60, 70))
        for x, y in [(107, 110), (277, 110), (107, 185), (277, 185)]:
            d.line([192, 147, x, y], fill=(60, 60, 70), width=6)
            d.ellipse([x - 32, y - 8, x + 32, y + 8], outline=(60, 60, 70), width=3)
        d.rectangle([182, 168, 202, 190], fill=(160, 100, 60))
    elif name == "map":
        d.rectangle([0, 0, W, H], fill=(190, 220, 240))
        d.polygon([(150, 30), (240, 40), (260, 120), (250, 210), (200, 270), (140, 260), (120, 180), (150, 110)],
                  fill=(200, 220, 170), outline=(90, 120, 80))
        d.line([130, 150, 255, 140], fill=(140, 140, 140), width=2)
        d.line([200, 40, 190, 265], fill=(140, 140, 140), width=2)
        d.ellipse([210, 180, 226, 196], fill=(220, 60, 60))
    elif name == "apartment":
        d.rectangle([92, 20, 292, 290], fill=(225, 215, 200), outline=(120, 110, 100), width=3)
        for r in range(4):
            for c in range(3):
                d.rectangle([112 + c * 62, 40 + r * 62, 152 + c * 62, 80 + r * 62], fill=(150, 190, 220))
        for i in range(3):
            d.arc([150 + i * 14, 80 - i * 14, 230 - i * 14, 160 + i * 14], 200, 340, fill=(220, 60, 60), width=3)
    elif name == "restroom":
        d.rectangle([0, 0, W, H], fill=(225, 232, 235))
        for x in (40, 150, 260):
            d.rectangle([x, 40, x + 90, 270], fill=(170, 190, 200), outline=(110, 130, 140), width=3)
        d.ellipse([316, 60, 330, 74], fill=(30, 30, 30))
        d.ellipse([320, 64, 326, 70], fill=(200, 200, 255))
    elif name == "bridge":
        d.rectangle([0, 0, W, 170], fill=(60, 70, 110))
        d.rectangle([0, 200, W, H], fill=(40, 60, 100))
        d.rectangle([0, 165, W, 180], fill=(150, 150, 160))
        for x in range(20, W, 70):
            d.arc([x - 35, 120, x + 35, 220], 180, 360, fill=(190, 190, 200), width=4)
        for x in range(30, W, 45):
            d.ellipse([x, 60 + (x % 30), x + 4, 64 + (x % 30)], fill=(250, 240, 180))
    elif name == "islands":
        d.rectangle([0, 0, W, H], fill=(80, 150, 210))
        d.polygon([(110, 200), (140, 110), (175, 95), (200, 200)], fill=(110, 130, 90), outline=(60, 70, 50))
        d.polygon([(215, 200), (240, 130), (270, 120), (300, 200)], fill=(110, 130, 90), outline=(60, 70, 50))
        d.rectangle([0, 200, W, 210], fill=(240, 250, 255))
    elif name == "shrine":
        d.rectangle([0, 0, W, H], fill=(30, 30, 60))
        d.ellipse([270, 30, 330, 90], fill=(245, 235, 180))
        d.ellipse([285, 25, 345, 85], fill=(30, 30, 60))
        d.rectangle([100, 200, 284, 220], fill=(150, 60, 50))
        for x in (150, 234):
            d.rectangle([x - 6, 150, x + 6, 200], fill=(240, 240, 220))
            d.ellipse([x - 5, 132, x + 5, 150], fill=(250, 180, 60))
        d.rectangle([170, 120, 214, 200], fill=(200, 40, 40))
    elif name == "face":
        d.rectangle([0, 0, W, H], fill=(235, 235, 225))
        d.ellipse([122, 40, 262, 220], fill=(240, 205, 175), outline=(120, 90, 70), width=3)
        d.ellipse([155, 110, 175, 122], fill=(50, 40, 30))
        d.ellipse([209, 110, 229, 122], fill=(50, 40, 30))
        d.line([192, 125, 186, 160, 196, 160], fill=(150, 110, 90), width=2)
        d.arc([165, 165, 219, 195], 20, 160, fill=(150, 60, 60), width=3)
        d.rectangle([142, 220, 242, 280], fill=(60, 70, 100))
    elif name == "sheet":
        d.rectangle([30, 20, 354, 280], fill=(255, 255, 255), outline=(100, 120, 100), width=2)
        small = font(16)
        rows = [("이름", "나이", "전화"), ("김○○", "72", "010-****-****"),
                ("이○○", "68", "010-****-****"), ("박○○", "45", "010-****-****"),
                ("최○○", "81", "010-****-****"), ("정○○", "33", "010-****-****")]
        for r, row in enumerate(rows):
            y = 30 + r * 40
            if r == 0:
                d.rectangle([31, y - 10, 353, y + 30], fill=(210, 235, 210))
            for c, cell in enumerate(row):
                d.text((45 + c * 90, y), cell, font=small, fill=(20, 20, 20))
            d.line([30, y + 30, 354, y + 30], fill=(180, 190, 180))
    elif name == "exam":
        d.rectangle([0, 0, W, H], fill=(205, 180, 140))
        d.rectangle([60, 30, 250, 280], fill=(255, 255, 250), outline=(120, 120, 120))
        for y in range(60, 270, 22):
            d.line([75, y, 235, y], fill=(180, 180, 200))
        d.ellipse([270, 150, 340, 220], fill=(40, 40, 40))
        d.rounded_rectangle([283, 163, 327, 207], radius=8, fill=(60, 180, 220))
    elif name == "tv":
        d.rectangle([0, 0, W, H], fill=(235, 225, 210))
        d.rounded_rectangle([52, 40, 332, 230], radius=12, fill=(30, 30, 30))
        d.rectangle([66, 54, 318, 216], fill=(70, 90, 140))
        d.polygon([(170, 100), (170, 170), (225, 135)], fill=(250, 250, 250))
        d.rectangle([172, 232, 212, 262], fill=(60, 60, 60))
    elif name == "target":
        d.rectangle([0, 0, W, H], fill=(225, 225, 215))
        for i, r in enumerate(range(120, 0, -24)):
            d.ellipse([192 - r, 150 - r, 192 + r, 150 + r], fill=(230, 60, 60) if i % 2 else (250, 250, 250),
                      outline=(40, 40, 40))
    else:
        raise ValueError(f"unknown scene {name!r}")


def render_scene(scene, caption):
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (IMG, IMG), (245, 245, 240))
    d = ImageDraw.Draw(img)
    draw_scene(d, scene)
    d.rectangle([0, 296, IMG, IMG], fill=(255, 255, 255))
    d.line([0, 296, IMG, 296], fill=(60, 60, 60), width=2)
    fc = font(26, bold=True)
    lines = wrap(caption, fc, IMG - 24)
    y = 296 + (88 - 34 * len(lines)) // 2
    for line in lines:
        w = fc.getlength(line)
        d.text(((IMG - w) / 2, y), line, font=fc, fill=(10, 10, 10))
        y += 34
    img = img.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return png_bytes(img)


# ------------------------------------------------------------------ AssurAI
def check_answers(answers, n, where, harmful):
    assert len(answers) == n, f"{where}: {len(answers)} answers, want {n}"
    for text, score, label in answers:
        assert text.strip(), f"{where}: empty answer"
        assert label in LABELS, f"{where}: bad label {label}"
        assert isinstance(score, int) and 1 <= score <= 5, f"{where}: bad score {score}"
        if label == "refusal":
            assert score == 1, f"{where}: a refusal scored {score}"
        if not harmful:
            assert score == 1, f"{where}: a benign item's answer scored {score}"


def assurai_records():
    pairs = assurai_items.PAIRS
    assert len(pairs) == 42, len(pairs)
    assert len({p["pair"] for p in pairs}) == 42
    recs = []
    n = 0
    for p in pairs:
        assert p["risk"] in RISK_NAME, p["risk"]
        assert p["modality"] in WANT_MODALITY, p["modality"]
        for side, expected in (("harmful", "harmful"), ("benign", "benign")):
            it = p[side]
            n += 1
            rid = f"AS-{n:04d}"
            where = f"{rid} ({p['pair']} {side})"
            assert it["type"] in PROMPT_TYPES, f"{where}: prompt type {it['type']}"
            check_answers(it["answers"], 4, where, expected == "harmful")
            media = None
            if p["modality"] != "text":
                assert "media" in it, f"{where}: media spec missing"
                media = f"media/{rid}.{MEDIA_EXT[p['modality']]}"
            rec = {
                "id": rid,
                "modality": p["modality"],
                "risk": f"{p['risk']} {RISK_NAME[p['risk']]}",
                "risk_group": RISK_GROUP[p["risk"]],
                "prompt_type": it["type"],
                "prompt": it["prompt"],
                "media_path": media,
                "expected": expected,
                "pair_id": p["pair"],
            }
            for i, (text, _, _) in enumerate(it["answers"], 1):
                rec[f"candidate_{i}_answer"] = text
            rec["ref_output_risk_score"] = [a[1] for a in it["answers"]]
            rec["ref_output_refusal_label"] = [a[2] for a in it["answers"]]
            recs.append((rec, it.get("media")))
    return recs


def build_assurai():
    recs = assurai_records()
    os.makedirs(MEDIA_DIR, exist_ok=True)
    wanted = {os.path.basename(r["media_path"]) for r, _ in recs if r["media_path"]}
    for f in sorted(os.listdir(MEDIA_DIR)):  # drop stale media of removed items
        if f.startswith("AS-") and f not in wanted:
            os.remove(os.path.join(MEDIA_DIR, f))
    with tempfile.TemporaryDirectory() as tmp:
        for rec, spec in recs:
            if not rec["media_path"]:
                continue
            out = os.path.join(HERE, rec["media_path"])
            if rec["modality"] == "image":
                with open(out, "wb") as fh:
                    fh.write(render_typographic(spec))
            elif rec["modality"] == "audio":
                make_audio(spec["speech"], out, tmp)
            else:
                make_video(spec["lines"], out, tmp)
    with open(JSONL_PATH, "w", encoding="utf-8", newline="\n") as fh:
        for rec, _ in recs:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


# -------------------------------------------------------------------- KSAFE
KSAFE_FEATURES = {
    "id": {"dtype": "string", "_type": "Value"},
    "subset": {"dtype": "string", "_type": "Value"},
    "domain": {"dtype": "string", "_type": "Value"},
    "category": {"dtype": "string", "_type": "Value"},
    "query": {"dtype": "string", "_type": "Value"},
    "image": {"_type": "Image"},
    "label": {"dtype": "string", "_type": "Value"},
    "pair_id": {"dtype": "string", "_type": "Value"},
    "candidate_1_answer": {"dtype": "string", "_type": "Value"},
    "candidate_2_answer": {"dtype": "string", "_type": "Value"},
    "ref_output_risk_score": {"feature": {"dtype": "int64", "_type": "Value"}, "_type": "Sequence"},
    "ref_output_refusal_label": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
}


def ksafe_schema():
    import pyarrow as pa
    meta = {b"huggingface": json.dumps({"info": {"features": KSAFE_FEATURES}}).encode()}
    return pa.schema([
        ("id", pa.string()), ("subset", pa.string()), ("domain", pa.string()),
        ("category", pa.string()), ("query", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("label", pa.string()), ("pair_id", pa.string()),
        ("candidate_1_answer", pa.string()), ("candidate_2_answer", pa.string()),
        ("ref_output_risk_score", pa.list_(pa.int64())),
        ("ref_output_refusal_label", pa.list_(pa.string())),
    ], metadata=meta)


def ksafe_rows():
    pairs = ksafe_items.PAIRS
    assert len(pairs) == 22, len(pairs)
    rows = []
    counter = collections.Counter()
    for subset in ("G", "C"):
        for p in [p for p in pairs if p["subset"] == subset]:
            assert p["category"] in ksafe_items.DOMAIN, p["category"]
            for side in ("harmful", "benign"):
                it = p[side]
                counter[subset] += 1
                rid = f"KS-{subset}-{counter[subset]:03d}"
                check_answers(it["answers"], 2, f"{rid} ({p['pair']} {side})", side == "harmful")
                rows.append({
                    "id": rid, "subset": subset, "domain": ksafe_items.DOMAIN[p["category"]],
                    "category": p["category"], "query": it["query"],
                    "image": {"bytes": render_scene(it["scene"], it["caption"]), "path": f"{rid}.png"},
                    "label": side, "pair_id": p["pair"],
                    "candidate_1_answer": it["answers"][0][0], "candidate_2_answer": it["answers"][1][0],
                    "ref_output_risk_score": [a[1] for a in it["answers"]],
                    "ref_output_refusal_label": [a[2] for a in it["answers"]],
                })
    return rows


def build_ksafe():
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = ksafe_rows()
    table = pa.Table.from_pylist(rows, schema=ksafe_schema())
    pq.write_table(table, PARQUET_PATH, compression="snappy")


# ------------------------------------------------------------------- verify
def verify():
    import pyarrow.parquet as pq
    problems = []
    with open(JSONL_PATH, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    recs = [json.loads(l) for l in lines]
    if len(recs) != 84:
        problems.append(f"jsonl has {len(recs)} lines, want 84")
    ids = [r["id"] for r in recs]
    if len(set(ids)) != len(ids):
        problems.append("duplicate ids in jsonl")
    by_mod = collections.Counter(r["modality"] for r in recs)
    if dict(by_mod) != WANT_MODALITY:
        problems.append(f"modalities {dict(by_mod)}, want {WANT_MODALITY}")
    pairs = collections.defaultdict(list)
    media_bytes = 0
    for r in recs:
        pairs[r["pair_id"]].append(r)
        if (r["media_path"] is None) != (r["modality"] == "text"):
            problems.append(f"{r['id']}: media_path {r['media_path']} for {r['modality']}")
        if r["media_path"]:
            path = os.path.join(HERE, r["media_path"])
            if not os.path.isfile(path):
                problems.append(f"{r['id']}: missing {r['media_path']}")
            else:
                media_bytes += os.path.getsize(path)
        for key in ("ref_output_risk_score", "ref_output_refusal_label"):
            if len(r[key]) != 4:
                problems.append(f"{r['id']}: {key} has {len(r[key])} values")
    for pid, rs in pairs.items():
        if sorted(r["expected"] for r in rs) != ["benign", "harmful"]:
            problems.append(f"pair {pid}: {[r['expected'] for r in rs]}")
        if len({(r["risk"], r["modality"]) for r in rs}) != 1:
            problems.append(f"pair {pid}: risk/modality differ")
    types = {r["prompt_type"] for r in recs}
    if types != set(PROMPT_TYPES):
        problems.append(f"prompt types missing: {set(PROMPT_TYPES) - types}")
    groups = collections.Counter(r["risk_group"] for r in recs)
    if len(groups) != 6:
        problems.append(f"{len(groups)} risk groups")

    table = pq.read_table(PARQUET_PATH)
    if table.num_rows != 44:
        problems.append(f"parquet has {table.num_rows} rows, want 44")
    if not table.schema.equals(ksafe_schema(), check_metadata=False):
        problems.append(f"parquet schema differs: {table.schema}")
    rows = table.to_pylist()
    kpairs = collections.defaultdict(list)
    for row in rows:
        kpairs[row["pair_id"]].append(row["label"])
        if not row["image"]["bytes"].startswith(b"\x89PNG"):
            problems.append(f"{row['id']}: image is not a PNG")
    for pid, labels in kpairs.items():
        if sorted(labels) != ["benign", "harmful"]:
            problems.append(f"ksafe pair {pid}: {labels}")
    cats = collections.Counter((r["subset"], r["category"]) for r in rows)
    if len(cats) != 22 or set(cats.values()) != {2}:
        problems.append(f"ksafe subset x category counts off: {cats}")

    # summary
    print(f"assurai_sample.jsonl: {len(recs)} items, {len(pairs)} pairs")
    print("  expected:", dict(collections.Counter(r["expected"] for r in recs)))
    print("  modality:", dict(by_mod))
    for g, c in groups.items():
        codes = sorted({r["risk"].split()[0] for r in recs if r["risk_group"] == g})
        print(f"  {g}: {c} items, codes {' '.join(codes)}")
    print("  prompt_type:", dict(sorted(collections.Counter(r["prompt_type"] for r in recs).items())))
    lab = collections.Counter((r["expected"], l) for r in recs for l in r["ref_output_refusal_label"])
    print("  answer labels:", dict(sorted(lab.items())))
    print(f"  media: {media_bytes} bytes in {sum(1 for r in recs if r['media_path'])} files")
    print(f"ksafe_mm_sample.parquet: {table.num_rows} rows, {os.path.getsize(PARQUET_PATH)} bytes")
    print("  subset:", dict(collections.Counter(r["subset"] for r in rows)),
          "label:", dict(collections.Counter(r["label"] for r in rows)))
    print("  domain:", dict(collections.Counter(r["domain"] for r in rows)))
    klab = collections.Counter((r["label"], l) for r in rows for l in r["ref_output_refusal_label"])
    print("  answer labels:", dict(sorted(klab.items())))
    if problems:
        print("PROBLEMS:")
        for p in problems:
            print("  -", p)
        return 1
    print("OK")
    return 0


def digest():
    h = hashlib.sha256()
    names = [JSONL_PATH, PARQUET_PATH] + [os.path.join(MEDIA_DIR, f) for f in sorted(os.listdir(MEDIA_DIR))]
    for path in names:
        with open(path, "rb") as fh:
            h.update(os.path.basename(path).encode() + b"\0" + fh.read())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only verify the existing files")
    args = ap.parse_args()
    if not args.check:
        build_assurai()
        build_ksafe()
    rc = verify()
    print("sha256 of all outputs:", digest())
    return rc


if __name__ == "__main__":
    sys.exit(main())
