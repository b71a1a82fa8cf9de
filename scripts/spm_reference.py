#!/usr/bin/env python3
"""Reference SentencePiece models and encodings for `src/models/spm.rs`.

What: trains four tiny SentencePiece models on the English, Spanish and
Persian sentences below and writes them to `tests/fixtures/spm/`:

- `unigram_nfkc.model`: unigram, `nmt_nfkc` normalization (the default, and
  what Marian, T5, mT5 and NLLB use);
- `unigram_user.model`: unigram, `nmt_nfkc`, with user-defined symbols
  (`<2es>`, `<2fa>`, `>>es<<`, ...) as MADLAD-400 and OPUS-MT use them for
  target languages, and T5's id layout (`<pad>`=0, `</s>`=1, `<unk>`=2, no
  `<s>`);
- `bpe_byte_fallback.model`: BPE with byte fallback, `identity` normalization
  and extra whitespace kept (`remove_extra_whitespaces=false`), as Llama 2's
  tokenizer is set up;
- `bpe.model`: BPE without byte fallback, case-folding `nmt_nfkc_cf`, the
  same user-defined symbols, `<pad>` at id 3.

The full `nmt_nfkc` character map alone is 240 KB, too big for a test fixture.
The models therefore carry the `nmt_nfkc` (`nmt_nfkc_cf`) rules restricted to
the Unicode blocks the test strings use (Latin, combining marks, Arabic,
Cyrillic, general punctuation, presentation forms, full-width forms, U+2581),
taken from sentencepiece's own rule table
(`SentencePieceNormalizer.decompile()`) and passed back as
`normalization_rule_tsv`. The script checks that the restricted map
normalizes every training sentence and test string exactly as the full one
does, so the fixtures show `nmt_nfkc` behaviour at a tenth of the size; the
Rust side reads the map the same way whatever its size.

It then encodes every string of `CASES` with `SentencePieceProcessor` and
writes `tests/fixtures/spm/expected.json`: per model and string the ids
(`encode(text)`), the pieces (`encode(text, out_type=str)`) and the decoded
text (`decode(ids)`). The Rust tests build a `tokenizers::Tokenizer` from each
model file and must reproduce all three.

How: `python3 scripts/spm_reference.py` from anywhere (needs only the
`sentencepiece` package: `pip install sentencepiece`). Training is seeded and
single-threaded, so a rerun with the same sentencepiece version writes the same
files.

Versions: written with Python 3.11 and sentencepiece 0.2.3; the version used is
recorded in `expected.json`.
"""

import io
import json
import os
import tempfile

import sentencepiece as spm

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "spm")

ENGLISH = """\
The city council approved the new budget on Tuesday after a long debate.
Heavy rain caused flooding in several northern towns over the weekend.
The central bank kept interest rates unchanged at 4.5 percent.
Scientists found a new species of frog in the rainforest.
The football team won the final match 3 to 1 in front of 60,000 fans.
Prices of bread and milk rose for the third month in a row.
The minister said the new law will protect workers and small businesses.
Thousands of people marched through the capital to demand clean water.
The company reported record profits of 12 billion dollars in 2023.
A fire destroyed an old factory near the river early this morning.
Doctors warned that the flu season could be worse than last year.
The president will visit three countries in Asia next month.
Students returned to school after the long summer holiday.
The museum opened a new exhibition about the history of the city.
Farmers are worried about the lack of rain in the south.
The election results will be announced on Sunday evening.
Police arrested two men after a robbery at a bank in the city centre.
The government plans to build 200,000 new homes by 2030.
Oil prices fell sharply after the meeting of producing countries.
The train service between the two cities was suspended because of snow.
Local people say the new bridge has made their lives much easier.
The report shows that air pollution has fallen in most large cities.
Engineers finished the repairs on the main road ahead of schedule.
The festival attracted more than a million visitors this year.
Teachers went on strike to demand higher salaries and smaller classes.
The hospital received new equipment donated by a local charity.
Exports of coffee and cotton increased by 8 percent last quarter.
The storm left about 40,000 homes without electricity.
Voters will choose a new mayor in the first round next week.
The court ruled that the contract was valid and must be honoured.
Researchers say the vaccine is safe and effective for children.
The airline cancelled dozens of flights because of the strike.
A new study finds that people are sleeping less than before.
The national park will close for repairs until the end of May.
The talks between the two parties ended without an agreement.
Unemployment dropped to its lowest level in ten years.
The singer announced a world tour starting in London in June.
Firefighters fought the blaze for twelve hours before bringing it under control.
The price of gold reached a new high on Friday.
Officials said the water is now safe to drink again.
I'm fine, thanks. It's a beautiful day, isn't it?
She finished her final report and filed it on time.
"""

SPANISH = """\
El ayuntamiento aprobó el nuevo presupuesto el martes tras un largo debate.
Las fuertes lluvias causaron inundaciones en varios pueblos del norte.
El banco central mantuvo los tipos de interés en el 4,5 por ciento.
Los científicos descubrieron una nueva especie de rana en la selva.
El equipo ganó la final por 3 a 1 ante 60.000 aficionados.
El precio del pan y de la leche subió por tercer mes consecutivo.
La ministra dijo que la nueva ley protegerá a los trabajadores.
Miles de personas marcharon por la capital para exigir agua limpia.
La empresa registró beneficios récord de 12.000 millones en 2023.
Un incendio destruyó una vieja fábrica cerca del río esta mañana.
Los médicos advierten que la temporada de gripe podría ser peor.
El presidente visitará tres países de Asia el próximo mes.
Los niños volvieron a la escuela después de las vacaciones de verano.
El museo inauguró una exposición sobre la historia de la ciudad.
Los agricultores están preocupados por la falta de lluvia en el sur.
Los resultados de las elecciones se anunciarán el domingo por la noche.
La policía detuvo a dos hombres tras el robo de un banco.
El gobierno planea construir 200.000 viviendas nuevas antes de 2030.
El servicio de tren entre las dos ciudades se suspendió por la nieve.
Los vecinos dicen que el nuevo puente les ha facilitado la vida.
El informe muestra que la contaminación del aire ha bajado.
Los ingenieros terminaron las obras de la carretera antes de lo previsto.
El festival atrajo a más de un millón de visitantes este año.
Los profesores hicieron huelga para pedir salarios más altos.
El hospital recibió equipos nuevos donados por una asociación.
La tormenta dejó a unas 40.000 viviendas sin electricidad.
Los votantes elegirán un nuevo alcalde la próxima semana.
El tribunal decidió que el contrato era válido.
¿Cómo estás? ¡Muy bien, gracias! Él está en la canción del año.
La señora Núñez habló con el niño sobre el pingüino y la cigüeña.
Según el acuerdo, la compañía pagará una indemnización a cada familia.
La economía creció un 2,1 % en el último trimestre del año.
"""

PERSIAN = """\
شورای شهر روز سه‌شنبه بودجه جدید را پس از بحثی طولانی تصویب کرد.
باران شدید در آخر هفته باعث سیل در چند شهر شمالی شد.
بانک مرکزی نرخ بهره را بدون تغییر نگه داشت.
دانشمندان گونه جدیدی از قورباغه را در جنگل کشف کردند.
تیم فوتبال در دیدار پایانی با نتیجه ۳ بر ۱ پیروز شد.
قیمت نان و شیر برای سومین ماه پیاپی افزایش یافت.
وزیر گفت قانون جدید از کارگران و کسب‌وکارهای کوچک حمایت می‌کند.
هزاران نفر در پایتخت برای درخواست آب سالم راهپیمایی کردند.
شرکت در سال ۲۰۲۳ سود بی‌سابقه‌ای گزارش داد.
آتش‌سوزی یک کارخانه قدیمی را در نزدیکی رودخانه ویران کرد.
پزشکان هشدار دادند که فصل آنفولانزا ممکن است بدتر باشد.
رئیس‌جمهور ماه آینده از سه کشور آسیایی دیدار خواهد کرد.
دانش‌آموزان پس از تعطیلات تابستانی به مدرسه بازگشتند.
موزه نمایشگاه جدیدی درباره تاریخ شهر افتتاح کرد.
کشاورزان از کمبود باران در جنوب نگران هستند.
نتایج انتخابات یکشنبه شب اعلام خواهد شد.
پلیس دو مرد را پس از سرقت از بانک بازداشت کرد.
دولت قصد دارد تا سال ۲۰۳۰ دویست هزار خانه جدید بسازد.
سلام دنیا، امروز هوا خوب است.
من می‌خواهم فردا به کتابخانه بروم.
"""

# Strings every model encodes. Each exercises one part of the normalizer or
# model: whitespace handling, accents, Arabic script, digits, characters the
# models never saw (unknown / byte fallback), NFKC-affected characters,
# user-defined symbols (plain text for the models without them).
CASES = [
    "Hello world",
    "The city council approved the new budget.",
    "  leading and trailing spaces  ",
    "multiple    spaces   inside",
    " ",
    "",
    "Él está en la canción, señor Núñez. ¿Cómo estás?",
    "cafe\u0301 con leche",  # decomposed é: NFKC composes it
    "سلام دنیا، امروز هوا خوب است.",
    "من می‌خواهم فردا بروم",  # with ZERO WIDTH NON-JOINER
    "ﻻ ﺳﻼم",  # Arabic presentation forms: NFKC maps them to letters
    "In 2023 there were 1,234,567 votes (42%).",
    "۱۲۳ و ٤٥٦",  # Persian and Arabic-Indic digits
    "Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ １２３",
    "the ﬁnal ﬂow",  # ligatures
    "non\u00a0breaking\u00a0space",
    "tab\tand\nnewline",
    "ellipsis… and “quotes”",
    "Cyrillic Жук and 中文 text",
    "emoji 😀 here",
    "x😀😀y",
    "<2fa> Hello world",
    "<2es>Hola mundo",
    "translate <2es> this",
    ">>es<< El banco central",
    ">>pes<< سلام",
    ">>ES<< Hola",  # upper case: a user-defined symbol only after case folding
    "a ▁ b",  # a literal U+2581
]

USER_DEFINED = ["<2es>", "<2fa>", "<2en>", ">>es<<", ">>pes<<"]

# Code point ranges whose normalization rules the fixtures keep.
RULE_RANGES = [
    (0x0000, 0x024F),  # Basic Latin to Latin Extended-B
    (0x0300, 0x036F),  # combining diacritical marks
    (0x0400, 0x04FF),  # Cyrillic (case folding)
    (0x0600, 0x06FF),  # Arabic
    (0x2000, 0x206F),  # general punctuation (spaces, ZWNJ, quotes, ellipsis)
    (0x2580, 0x259F),  # block elements (U+2581, SentencePiece's space mark)
    (0x3000, 0x3000),  # ideographic space
    (0xFB00, 0xFDFF),  # alphabetic and Arabic presentation forms A
    (0xFE70, 0xFEFF),  # Arabic presentation forms B, BOM
    (0xFF00, 0xFFEF),  # half- and full-width forms
]

MODELS = {
    "unigram_nfkc": dict(model_type="unigram", vocab_size=500, rules="nmt_nfkc"),
    "unigram_user": dict(
        model_type="unigram",
        vocab_size=500,
        rules="nmt_nfkc",
        user_defined_symbols=USER_DEFINED,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
    ),
    "bpe_byte_fallback": dict(
        model_type="bpe",
        vocab_size=700,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
    ),
    "bpe": dict(
        model_type="bpe",
        vocab_size=400,
        rules="nmt_nfkc_cf",
        user_defined_symbols=USER_DEFINED,
        pad_id=3,
    ),
}


def in_ranges(text):
    return all(any(lo <= ord(c) <= hi for lo, hi in RULE_RANGES) for c in text)


def restricted_rules(rule_name):
    """Writes the rules of `rule_name` whose source is at most two code points
    in `RULE_RANGES` as a rule TSV in the current directory, checks it against
    the full map, returns the TSV's name (the trainer records it in the
    model, hence a relative one)."""
    full = spm.SentencePieceNormalizer(rule_name=rule_name)
    path = f"{rule_name}.tsv"
    with open(path, "w", encoding="utf-8") as f:
        for source, target in full.decompile():
            if len(source) <= 2 and in_ranges(source):
                hexes = [" ".join(f"{ord(c):X}" for c in s) for s in (source, target)]
                f.write("\t".join(hexes) + "\n")
    restricted = spm.SentencePieceNormalizer(rule_tsv=path)
    for text in (ENGLISH + SPANISH + PERSIAN).splitlines() + CASES:
        assert full.normalize(text) == restricted.normalize(text), (rule_name, text)
    return path


def train(name, options):
    sentences = (ENGLISH + SPANISH + PERSIAN).splitlines()
    options = dict(options)
    rules = options.pop("rules", None)
    if rules:
        options["normalization_rule_tsv"] = restricted_rules(rules)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        character_coverage=1.0,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
        **options,
    )
    data = model.getvalue()
    with open(os.path.join(OUT, f"{name}.model"), "wb") as f:
        f.write(data)
    return spm.SentencePieceProcessor(model_proto=data)


def main():
    os.makedirs(OUT, exist_ok=True)
    spm.set_random_generator_seed(20240501)
    expected = {"sentencepiece_version": spm.__version__, "models": {}}
    os.chdir(tempfile.mkdtemp())  # for the rule TSVs
    for name, options in MODELS.items():
        sp = train(name, options)
        cases = []
        for text in CASES:
            ids = sp.encode(text)
            controls = [i for i in (sp.bos_id(), sp.eos_id()) if i >= 0]
            cases.append(
                {
                    "text": text,
                    "ids": ids,
                    "pieces": sp.encode(text, out_type=str),
                    "decoded": sp.decode(ids),
                    # control ids around the text decode to nothing
                    "decoded_with_controls": sp.decode(controls[:1] + ids + controls[1:]),
                    "controls": controls,
                }
            )
        expected["models"][name] = {
            "file": f"{name}.model",
            "vocab_size": sp.get_piece_size(),
            "unk_id": sp.unk_id(),
            "cases": cases,
        }
        size = os.path.getsize(os.path.join(OUT, f"{name}.model"))
        print(f"{name}: {sp.get_piece_size()} pieces, {size} bytes")
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
