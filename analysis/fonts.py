"""The fonts the figures draw text with, and the characters none of them can draw.

DejaVu Sans (matplotlib's own) covers Latin, Greek and Cyrillic; a level label in another script
(半难负样本) would be drawn as empty boxes, with a "Glyph ... missing" warning per character
(matplotlib#14269). The figures ask for a list of families, and matplotlib takes each glyph from the
first family that has it: WenQuanYi Zen Hei for Chinese, Japanese and Korean, then Unifont, which
holds every character of Unicode's Basic Multilingual Plane, and Unifont Upper for the planes above
(Debian packages fonts-wqy-zenhei and fonts-unifont, installed by ``make setup``). A label holding a
character none of the installed families has is refused when the study file loads
(:func:`missing_glyphs`, called by study.studyfile).
"""

from __future__ import annotations

import functools
import logging

FAMILIES = ["DejaVu Sans", "WenQuanYi Zen Hei", "Unifont", "Unifont Upper"]
FONT_PACKAGES = "fonts-wqy-zenhei fonts-unifont"  # Debian: what make setup installs
# their files as Debian installs them: registered with matplotlib directly, so that a font cache
# written before they were installed does not hide them
FONT_FILES = ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", "/usr/share/fonts/opentype/unifont/unifont.otf",
              "/usr/share/fonts/opentype/unifont/unifont_upper.otf")

# matplotlib logs a "weight normal not found, using 500" line for WenQuanYi Zen Hei (a medium weight only)
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
# fontTools, subsetting these fonts into a PDF, warns once per figure that unifont's 'created' timestamp
# "seems very low" (the font's header, not our input): noise on every analysis
logging.getLogger("fontTools").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=1)
def _charsets() -> tuple[frozenset[int], ...]:
    """The code points of each installed family of FAMILIES (an absent family: none)."""
    from matplotlib import font_manager, ft2font

    register()
    out = []
    for family in FAMILIES:
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
        except ValueError:
            continue
        out.append(frozenset(ft2font.FT2Font(path).get_charmap()))
    return tuple(out)


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
    sets = _charsets()
    return "".join(dict.fromkeys(ch for ch in text if not ch.isspace() and not any(ord(ch) in s for s in sets)))
