"""Reference chrF2 values for the tests in src/chrf.rs.

Run: python -m venv v && v/bin/pip install sacrebleu==2.5.1 && v/bin/python scripts/chrf_reference.py
Prints, for each case, the corpus chrF (sacrebleu's defaults: character
n-grams 1..6, no word n-grams, beta 2, whitespace removed) to 6 decimals.
"""
from sacrebleu.metrics import CHRF

CASES = {
    "identical": (["El gobierno anunció nuevas medidas."], ["El gobierno anunció nuevas medidas."]),
    "partial": (["El gobierno anuncia medidas nuevas hoy."], ["El gobierno anunció nuevas medidas."]),
    "persian": (["دولت امروز اقدامات جدیدی اعلام کرد."], ["دولت اقدامات تازه‌ای را اعلام کرد."]),
    "corpus": (
        ["The cat sat on the mat.", "A quick brown fox.", "Nothing alike"],
        ["The cat is on the mat.", "The quick brown fox jumps.", "Completely different words"],
    ),
    "empty_hyp": ([""], ["Some reference"]),
    "short": (["ab"], ["abc"]),
}

chrf = CHRF()
for name, (hyps, refs) in CASES.items():
    print(name, f"{chrf.corpus_score(hyps, [refs]).score:.6f}")
