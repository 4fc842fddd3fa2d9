"""Draw a terminal capture (`tmux capture-pane -e -p`: text with SGR colour escapes) into a PNG
with DejaVu Sans Mono. It knows the SGR codes Neovim uses with 'termguicolors' (24-bit and
256-colour foreground/background, bold, italic, reverse, reset); others are ignored."""

import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
SIZE, FG, BG = 16, (220, 220, 220), (20, 22, 28)
BASIC = [(0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16), (36, 114, 200), (188, 63, 188),
         (17, 168, 205), (229, 229, 229)]
BRIGHT = [(102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67), (59, 142, 234),
          (214, 112, 214), (41, 184, 219), (255, 255, 255)]


def color256(n):
    if n < 8:
        return BASIC[n]
    if n < 16:
        return BRIGHT[n - 8]
    if n < 232:
        n -= 16
        return tuple(0 if c == 0 else 55 + 40 * c for c in (n // 36, n // 6 % 6, n % 6))
    return (8 + 10 * (n - 232),) * 3


def cells(line, style):
    """(char, style) pairs for one line; `style` carries over between lines, as in a terminal."""
    out = []
    for part in re.split(r"(\x1b\[[0-9;:]*m)", line):
        if not part.startswith("\x1b["):
            out.extend((ch, dict(style)) for ch in part)
            continue
        codes = [int(c) if c else 0 for c in re.split("[;:]", part[2:-1])] or [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                style.clear()
            elif c == 1:
                style["bold"] = True
            elif c == 3:
                style["italic"] = True
            elif c == 7:
                style["reverse"] = True
            elif c in (22, 23, 27):
                style.pop({22: "bold", 23: "italic", 27: "reverse"}[c], None)
            elif c in (38, 48) and i + 1 < len(codes):
                key = "fg" if c == 38 else "bg"
                if codes[i + 1] == 2:
                    style[key] = tuple(codes[i + 2:i + 5])
                    i += 4
                else:
                    style[key] = color256(codes[i + 2])
                    i += 2
            elif c in (39, 49):
                style.pop("fg" if c == 39 else "bg", None)
            elif 30 <= c <= 37 or 90 <= c <= 97:
                style["fg"] = (BASIC if c < 90 else BRIGHT)[c % 10]
            elif 40 <= c <= 47 or 100 <= c <= 107:
                style["bg"] = (BASIC if c < 100 else BRIGHT)[c % 10]
            i += 1
    return out


def main(src, dst):
    lines = open(src, encoding="utf-8").read().rstrip("\n").split("\n")
    font = ImageFont.truetype(FONT, SIZE)
    fonts = {(b, i): ImageFont.truetype(FONT.replace(".ttf", {(1, 0): "-Bold.ttf", (0, 1): "-Oblique.ttf",
                                                             (1, 1): "-BoldOblique.ttf"}.get((b, i), ".ttf")), SIZE)
             for b in (0, 1) for i in (0, 1)}
    w = int(font.getlength("M"))
    h = SIZE + 6
    style = {}
    rows = [cells(line, style) for line in lines]
    cols = max(len(r) for r in rows)
    img = Image.new("RGB", (cols * w + 24, len(rows) * h + 24), BG)
    draw = ImageDraw.Draw(img)
    for y, row in enumerate(rows):
        for x, (ch, st) in enumerate(row):
            fg, bg = st.get("fg", FG), st.get("bg", BG)
            if st.get("reverse"):
                fg, bg = bg, fg
            px, py = 12 + x * w, 12 + y * h
            if bg != BG:
                draw.rectangle([px, py, px + w, py + h], fill=bg)
            f = fonts[(int(st.get("bold", False)), int(st.get("italic", False)))]
            draw.text((px, py + 2), ch, font=f, fill=fg)
    img.save(dst)


if __name__ == "__main__":
    main(*sys.argv[1:3])
