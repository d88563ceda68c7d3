"""Figures draw every label a study file accepts (analysis/fonts.py; matplotlib#14269): Chinese level labels
run, and the analysis draws them with no missing-glyph warning; a label no installed font can draw is
refused at load."""

from __future__ import annotations

import subprocess
import sys

from conftest import fake_trial_env, finish_by_hand, store_env
from study.core.paths import REPO_ROOT

STUDY = """
name: {name}
fixed: {{method: interclr, labels: online, margin_type: cosine, margin: -0.5, epochs: 2}}
factors:
  sampling:
    - {{label: "{a}", set: {{sampling: semi-hard}}}}
    - {{label: "{b}", set: {{sampling: hard}}}}
seeds: [0, 1]
presets:
  smoke: {{resources: {{cpus: 1}}}}
"""


def _run(args, env, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_chinese_labels_are_drawn_and_an_undrawable_one_is_refused(tmp_path, isolated_store):
    from study.studyfile import load_study

    env = fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="2"))
    path = tmp_path / "zh.yaml"
    path.write_text(STUDY.format(name="zh", a="半难负样本", b="कठिन नमूने"))  # Chinese; Hindi (vowel signs: shaped)
    finish_by_hand(load_study(path, "smoke"))  # the labels pass load
    res = _run(["-m", "analysis", "--study", "zh", "--out", str(tmp_path / "results")], env)
    assert res.returncode == 0, res.stderr
    assert "Glyph" not in res.stderr and "missing from font" not in res.stderr, res.stderr
    assert (tmp_path / "results" / "zh" / "knn_convergence.png").stat().st_size > 0
    assert "半难负样本" in (tmp_path / "results" / "REPORT.md").read_text()
    assert "कठिन नमूने" in (tmp_path / "results" / "REPORT.md").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(STUDY.format(name="bad", a="𠀀 negatives", b="hard"))  # CJK extension B: no font has it
    res = _run(["-m", "study", "run", str(bad), "--preset", "smoke", "--dry-run"], env)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "no font of the figures can draw" in res.stderr and "fonts-wqy-zenhei" in res.stderr


def test_labels_that_would_not_show_as_written_are_one_clear_error(tmp_path):
    """A label that would look like another, not show, or be drawn unshaped: refused at load, naming the
    character (its code point and name: some do not show in a message)."""
    import pytest

    from study.core.errors import UserError
    from study.studyfile import load_study

    cases = [("semi\u00a0hard", "U+00A0 NO-BREAK SPACE"), ("semi\u200bhard", "U+200B ZERO WIDTH SPACE"),
             ("semi-hard\u200f", "U+200F RIGHT-TO-LEFT MARK"),
             ("e\u0301asy", "write it as 'éasy'"),  # looks like the composed 'éasy'
             ("\u2126", "write it as 'Ω'"),  # OHM SIGN: NFC makes it the Greek letter
             ("A\ufe0f", "U+FE0F VARIATION SELECTOR-16"),  # invisible: 'A' and 'A\ufe0f' look the same
             ("\u1700\u1714", "U+1714 TAGALOG SIGN VIRAMA"),  # a virama only Unifont has: drawn unshaped
             ("\u182e\u1823\u1829", "U+182E MONGOLIAN LETTER MA"),  # joining letters only Unifont has
             ("\u0712\u0710", "U+0712 SYRIAC LETTER BETH"),  # right to left, only Unifont: unjoined
             ("\U0001f1eb\U0001f1f7", "REGIONAL INDICATOR SYMBOL LETTER F"),  # a flag: two boxed letters
             # printable for Python, blank in every font: a label that looks like its neighbour
             ("semi\u3164hard", "U+3164 HANGUL FILLER"), ("semi\uffa0hard", "U+FFA0 HALFWIDTH HANGUL FILLER"),
             ("semi\u034fhard", "U+034F COMBINING GRAPHEME JOINER"), ("semi\u2800hard", "U+2800 BRAILLE PATTERN BLANK"),
             (" semi-hard", "a space at its start or end"), ("semi-hard ", "a space at its start or end"),
             ("semi  hard", "two in a row"),
             ("ｈａｒｄ", "look alike"), ("ﬁne", None),  # full-width 'hard' beside 'hard'; a ligature beside 'fine'
             ("Hard", "look alike"), ("semi‐hard", "look alike", "semi-hard"),  # case; U+2010 HYPHEN
             ("cos −0.5", "look alike", "cos -0.5"),  # U+2212 MINUS SIGN
             ("соs", "mixes Cyrillic and Latin")]  # Cyrillic 'с', 'о' and a Latin 's'
    for i, (label, words, *given) in enumerate(cases):
        path = tmp_path / f"bad{i}.yaml"
        other = given[0] if given else "fine" if words is None else "hard"
        words = words or "look alike"
        path.write_text(STUDY.format(name=f"bad{i}", a=label, b=other))
        with pytest.raises(UserError) as err:
            load_study(path, "smoke")
        assert words in str(err.value) and ("level label" in str(err.value) or "levels" in str(err.value)), (
            label, str(err.value))
    # drawn as written: composed accents, Arabic and Hebrew (DejaVu Sans, shaped right to left), Devanagari,
    # Bengali, Tamil and Thai (Noto Sans, shaped)
    for i, label in enumerate(["éasy", "العربية", "עברית", "हिंदी", "বাংলা", "தமிழ்", "ที่นี่"]):
        path = tmp_path / f"good{i}.yaml"
        path.write_text(STUDY.format(name=f"good{i}", a=label, b="hard"))
        assert load_study(path, "smoke").cells, label


def test_the_shaping_scripts_take_a_font_with_shaping_tables():
    from analysis.fonts import _charsets, unshaped_marks

    sets = _charsets()
    for ch, family in (("ि", "Noto Sans Devanagari"), ("ী", "Noto Sans Bengali"), ("ั", "Noto Sans Thai")):
        assert next(f for f, s in sets.items() if ord(ch) in s) == family, ch
    assert unshaped_marks("हिंदी नमूने") == "" and unshaped_marks("\u1700\u1714") == "\u1714"


def test_factor_names_that_look_alike_are_refused(tmp_path):
    import pytest

    from study.core.errors import UserError
    from study.studyfile import load_study

    path = tmp_path / "twins.yaml"
    path.write_text("name: twins\nfixed: {method: interclr, epochs: 2}\nfactors:\n  margin: [-0.5, 0.0]\n"
                    "  ｍargin: [0.1, 0.2]\nseeds: [0]\n")
    with pytest.raises(UserError) as err:
        load_study(path, "smoke")
    assert "look alike" in str(err.value) and "'margin'" in str(err.value), str(err.value)
