"""The fonts the figures draw text with, and the characters none of them can draw.

DejaVu Sans (matplotlib's own) covers Latin, Greek and Cyrillic; a level label in another script
(半难负样本) would be drawn as empty boxes, with a "Glyph ... missing" warning per character
(matplotlib#14269). The figures ask for a list of families, and matplotlib takes each glyph from the
first family that has it: WenQuanYi Zen Hei for Chinese, Japanese and Korean, Noto Sans for the
scripts that need shaping (Devanagari, Bengali, Tamil, Thai, ...: matplotlib 3.11 shapes them with
libraqm when the font has the script's tables), then Unifont, which holds every character of Unicode's
Basic Multilingual Plane, and Unifont Upper for the planes above (Debian packages fonts-wqy-zenhei,
fonts-noto-core and fonts-unifont, installed by ``make setup``). Arabic and Hebrew are DejaVu Sans's,
shaped and laid out right to left. A label holding a character none of the installed families has
(:func:`missing_glyphs`), or a combining mark only Unifont has (:func:`unshaped_marks`: it would be
drawn beside its letter), is refused when the study file loads (study.studyfile).
"""

from __future__ import annotations

import functools
import logging

# scripts whose letters take vowel signs, conjuncts or reordering: matplotlib (3.11, libraqm) shapes
# them with a font that has the script's OpenType tables (Noto's, Debian fonts-noto-core); Unifont has none
SHAPED_SCRIPTS = ("Devanagari", "Bengali", "Gurmukhi", "Gujarati", "Oriya", "Tamil", "Telugu", "Kannada",
                  "Malayalam", "Sinhala", "Thai", "Lao", "Khmer", "Myanmar")
NOTO_FAMILIES = [f"Noto Sans {script}" for script in SHAPED_SCRIPTS]
UNSHAPED_FAMILIES = ("Unifont", "Unifont Upper")  # glyphs only: no shaping tables
FAMILIES = ["DejaVu Sans", "WenQuanYi Zen Hei", *NOTO_FAMILIES, *UNSHAPED_FAMILIES]
FONT_PACKAGES = "fonts-wqy-zenhei fonts-noto-core fonts-unifont"  # Debian: what make setup installs
# their files as Debian installs them: registered with matplotlib directly, so that a font cache
# written before they were installed does not hide them
FONT_FILES = ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
              *(f"/usr/share/fonts/truetype/noto/NotoSans{script}-Regular.ttf" for script in SHAPED_SCRIPTS),
              "/usr/share/fonts/opentype/unifont/unifont.otf", "/usr/share/fonts/opentype/unifont/unifont_upper.otf")

# matplotlib logs a "weight normal not found, using 500" line for WenQuanYi Zen Hei (a medium weight only)
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
# fontTools, subsetting these fonts into a PDF, warns once per figure that unifont's 'created' timestamp
# "seems very low" (the font's header, not our input): noise on every analysis
logging.getLogger("fontTools").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=1)
def _charsets() -> dict[str, frozenset[int]]:
    """The code points of each installed family of FAMILIES, in their order (an absent family: left out)."""
    from matplotlib import font_manager, ft2font

    register()
    out = {}
    for family in FAMILIES:
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
        except ValueError:
            continue
        out[family] = frozenset(ft2font.FT2Font(path).get_charmap())
    return out


@functools.lru_cache(maxsize=1)
def register() -> None:
    """Tell matplotlib of the installed FONT_FILES (once per process)."""
    import os

    from matplotlib import font_manager

    known = {f.fname for f in font_manager.fontManager.ttflist}
    for path in FONT_FILES:
        if os.path.isfile(path) and path not in known:
            font_manager.fontManager.addfont(path)


def missing_glyphs(text: str) -> str:
    """The characters of ``text`` that no installed family of FAMILIES can draw ("" when it draws whole)."""
    if text.isascii():
        return ""
    sets = _charsets().values()
    return "".join(dict.fromkeys(ch for ch in text if not ch.isspace() and not any(ord(ch) in s for s in sets)))


# letters that join or stack with their neighbours (Mongolian, Tibetan, Phags-pa): like right-to-left
# letters (Syriac, N'Ko, Thaana, ...), only a font with the script's tables draws them as written
_JOINING_BLOCKS = ((0x1800, 0x18AF), (0x0F00, 0x0FFF), (0xA840, 0xA87F))
# emoji drawn as one picture only by an emoji font's ligatures: flags (regional indicator pairs), skin tones
_EMOJI_PARTS = ((0x1F1E6, 0x1F1FF), (0x1F3FB, 0x1F3FF))


def unshaped_marks(text: str) -> str:
    """The characters of ``text`` the figures would not draw as written: combining marks (vowel signs,
    viramas, accents: Unicode categories Mn, Mc, Me) and joining or right-to-left letters that only a font
    without shaping tables has (UNSHAPED_FAMILIES: the first family of FAMILIES that has them), drawn
    beside or apart from their neighbours; and the parts of emoji sequences (flags, skin tones), drawn as
    separate boxes. "" when none."""
    import unicodedata

    if text.isascii():
        return ""
    sets = _charsets()

    def font_of(ch: str) -> str | None:
        return next((family for family, s in sets.items() if ord(ch) in s), None)

    def inside(ch: str, blocks) -> bool:
        return any(lo <= ord(ch) <= hi for lo, hi in blocks)

    def unshaped(ch: str) -> bool:
        if inside(ch, _EMOJI_PARTS):
            return True
        needs = (unicodedata.category(ch) in ("Mn", "Mc", "Me") or unicodedata.bidirectional(ch) in ("R", "AL")
                 or inside(ch, _JOINING_BLOCKS))
        return needs and font_of(ch) in UNSHAPED_FAMILIES

    return "".join(dict.fromkeys(ch for ch in text if unshaped(ch)))
