//! Paragraph and sentence segmentation of cleaned article text.
//!
//! Translation goes sentence by sentence and keeps paragraphs, and the
//! scheduler batches sentences by length, so every later stage depends on
//! these boundaries. The rules are tuned for news prose in many scripts:
//!
//! - A boundary is a terminator run (`.`, `!`, `?`, `…`, `؟`, `।`, `۔`, …)
//!   plus any closing quotes or brackets that follow it (`He said "no." Then`
//!   keeps the closing quote with the first sentence), and then whitespace.
//!   Without following whitespace there is no boundary, which keeps decimals,
//!   versions, domains and `U.S.` whole. The ideographic terminators
//!   `。！？` and the unambiguous script-specific ones (`؟`, `।`, `۔`, …) end a
//!   sentence even with no space after them, since those scripts do not
//!   space sentences apart.
//! - No boundary when the next word starts with a lowercase letter (`Why? she
//!   asked.`, `10 a.m. near the`, `Remember her answer... did you`): in cased
//!   scripts that almost always means the period belonged to an abbreviation
//!   or the sentence goes on.
//! - After a single period, the word before it decides: titles that precede
//!   names (`Mr.`, `Dr.`, `Sen.`, `St.`, …) never end a sentence; `No.`,
//!   `Jan.`, `Fig.`, … do not before a number; `e.g.`, `i.e.`, `vs.`, `v.`
//!   never do; single capital initials (`J. K. Rowling`), dotted
//!   acronyms (`U.S.`, `U.N.`, `p.m.`) and words such as `Inc.` or `etc.` end a
//!   sentence only when a typical sentence opener follows (`in the U.S. The
//!   ...` splits, `the U.S. Navy` does not).
//! - The Greek question mark `;` is not a terminator: the ASCII semicolon it
//!   is usually typed as is a clause separator in every other language.
//! - A "sentence" longer than [`MAX_SENTENCE_CHARS`] characters (run-on
//!   headline lists, text without punctuation) has pieces of at most
//!   [`SPLIT_TARGET_CHARS`] characters cut off its front until the rest is
//!   within the limit: at a comma or semicolon in the second half of that
//!   window, else at the last whitespace, else (scripts without spaces) at a
//!   character boundary. Model inputs downstream thus stay bounded; the cost
//!   is an occasional cut mid-clause in text that had no punctuation anyway.
//!
//! Written by hand because no well-kept crate does news-aware segmentation
//! with these rules: `unicode-segmentation` (UAX #29) breaks after every
//! `Mr.`; `punkt` needs a model trained per language; `sentencex`
//! (multilingual, maintained) never breaks inside quotes or parentheses,
//! while news quotes routinely hold several sentences that we translate one
//! at a time (the NTREX references split them too); and none bounds the
//! sentence length. Agreement with the NTREX-128 references is measured by
//! the `ntrex_agreement` test below.
//!
//! Every returned sentence is a trimmed, non-empty `&str` slice of the input;
//! slicing only ever happens at char boundaries.

/// Sentences longer than this many characters are cut into pieces.
pub const MAX_SENTENCE_CHARS: usize = 400;

/// The length, in characters, that pieces of an over-long sentence aim for
/// (and never exceed).
pub const SPLIT_TARGET_CHARS: usize = 300;

/// Splits cleaned text into paragraphs (blank line or single newline
/// separated; trimmed; empty ones dropped).
///
/// Every line is a paragraph: cleaned dumps keep one paragraph per line, and
/// a hard line break inside prose is rare enough that treating it as a
/// paragraph break costs less than guessing. `\r`, U+2028 and U+2029 count as
/// line breaks too.
pub fn paragraphs(text: &str) -> Vec<&str> {
    text.split(['\n', '\r', '\u{2028}', '\u{2029}'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Splits one paragraph into sentences (trimmed, non-empty, each a `&str`
/// slice of the input).
///
/// See the module docs for the rules. Pieces are at most
/// [`MAX_SENTENCE_CHARS`] characters long; longer runs without a sentence
/// boundary are cut near [`SPLIT_TARGET_CHARS`].
pub fn sentences(paragraph: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for end in boundaries(paragraph) {
        push_bounded(&paragraph[start..end], &mut out);
        start = end;
    }
    push_bounded(&paragraph[start..], &mut out);
    out
}

/// Convenience: paragraphs then sentences: `Vec<Vec<&str>>`.
///
/// Every inner vector is non-empty.
pub fn segment(text: &str) -> Vec<Vec<&str>> {
    paragraphs(text)
        .into_iter()
        .map(sentences)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Terminators that need whitespace after them to end a sentence (`.` is
/// also a decimal point, `!`/`?` appear inside names like `Yahoo!Mail`).
fn is_soft_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…' | '‼' | '⁇' | '⁈' | '⁉')
}

/// Terminators that end a sentence with or without a following space: the
/// ideographic ones (CJK text has no spaces) and script-specific marks that
/// never appear inside words or numbers.
fn is_hard_terminator(c: char) -> bool {
    matches!(
        c,
        '。' | '！'
            | '？'
            | '｡'
            | '؟' // Arabic/Persian question mark
            | '۔' // Urdu full stop
            | '।' // Devanagari danda
            | '॥'
            | '։' // Armenian full stop
            | '።' // Ethiopic full stop
            | '፧'
            | '။' // Myanmar
            | '។' // Khmer
    )
}

fn is_terminator(c: char) -> bool {
    is_soft_terminator(c) || is_hard_terminator(c)
}

/// Closing quotes and brackets that stay with the sentence they end.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | '”'
            | '’'
            | '»'
            | '›'
            | ')'
            | ']'
            | '}'
            | '」'
            | '』'
            | '）'
            | '】'
            | '》'
            | '〉'
            | '］'
            | '｝'
    )
}

/// Opening quotes and brackets (and Spanish inverted marks) that may stand
/// before the first letter of a sentence.
fn is_opener(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | '“'
            | '‘'
            | '„'
            | '‚'
            | '«'
            | '‹'
            | '('
            | '['
            | '{'
            | '「'
            | '『'
            | '（'
            | '【'
            | '《'
            | '〈'
            | '¿'
            | '¡'
    )
}

/// Byte offsets (exclusive ends) at which `text` splits into sentences, in
/// increasing order, each strictly inside `text`.
fn boundaries(text: &str) -> Vec<usize> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut out = Vec::new();
    // Start of the sentence being built (byte offset of its first char).
    let mut last = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        if !is_terminator(c) {
            i += 1;
            continue;
        }
        // The terminator run: "?!", "...", and closers mixed in ('."', '?")').
        let run_start = i;
        let mut j = i;
        let mut hard = false;
        while j < chars.len() && (is_terminator(chars[j].1) || is_closer(chars[j].1)) {
            hard |= is_hard_terminator(chars[j].1);
            j += 1;
        }
        let end = byte_at(j);
        i = j;
        if j >= chars.len() {
            break;
        }
        let spaced = chars[j].1.is_whitespace();
        if !spaced && !hard {
            continue;
        }
        let rest = text[end..].trim_start();
        if rest.is_empty() {
            break;
        }
        // A run with nothing worded before it ("... Then", a stray "!")
        // would make a sentence of punctuation alone.
        let sentence = text[last..chars[run_start].0].trim_start();
        if !sentence.chars().any(char::is_alphanumeric) {
            continue;
        }
        let next = first_word(rest);
        if next.chars().next().is_some_and(char::is_lowercase) {
            continue;
        }
        if !hard && !period_ends_sentence(sentence, &text[chars[run_start].0..end], next) {
            continue;
        }
        out.push(end);
        last = end;
    }
    out
}

/// The word a sentence would start with: leading openers skipped, up to the
/// next whitespace, with trailing punctuation dropped.
fn first_word(rest: &str) -> &str {
    let rest = rest.trim_start_matches(is_opener);
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end].trim_end_matches(|c: char| !c.is_alphanumeric())
}

/// Titles and honorifics: they precede a name, so a period after them never
/// ends a sentence. Matched case-sensitively on the capitalized form (and the
/// all-caps one, for shouting headlines).
const TITLES: &[&str] = &[
    "Mr", "Mrs", "Ms", "Mx", "Messrs", "Mmes", "Dr", "Drs", "Dra", "Prof", "Profs", "St", "Ste",
    "Sra", "Srta", "Mme", "Mlle", "Gen", "Gens", "Lt", "Col", "Maj", "Capt", "Cpt", "Cmdr", "Cdr",
    "Adm", "Brig", "Sgt", "Cpl", "Pvt", "Pte", "Sen", "Sens", "Rep", "Reps", "Gov", "Govs", "Pres",
    "Supt", "Insp", "Det", "Atty", "Rev", "Hon", "Rt", "Fr", "Mt", "Ft", "Amb", "Sec", "Cllr",
];

/// Abbreviations that stand before a number (`No. 10`, `Jan. 5`, `Fig. 3`).
const BEFORE_NUMBER: &[&str] = &[
    "no", "nos", "nr", "vol", "vols", "art", "arts", "p", "pp", "fig", "figs", "ch", "chap", "sec",
    "sect", "para", "paras", "op", "ref", "tel", "ca", "c", "approx", "rs", "jan", "feb", "mar",
    "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
];

/// Abbreviations that sit inside a sentence and practically never end one.
const NEVER_FINAL: &[&str] = &[
    "vs", "v", "cf", "viz", "approx", "incl", "esp", "resp", "ca",
];

/// Abbreviations that may end a sentence (`... Apple Inc. The company`) but
/// often do not (`Apple Inc. Chief Executive`): they end one only before a
/// typical sentence opener (see [`OPENERS`]). Words that are also ordinary
/// words (`Mar`, `Sun`, `Wed`, `min`) are left out on purpose.
const MAYBE_FINAL: &[&str] = &[
    "inc", "ltd", "co", "corp", "bros", "llc", "plc", "jr", "sr", "esq", "etc", "al", "ave",
    "blvd", "rd", "dept", "univ", "assn", "govt", "jan", "feb", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "tues", "thurs",
];

/// Words that commonly open an English sentence and are practically never
/// part of a name or title following an abbreviation. Used only to decide
/// ambiguous periods (after `U.S.`, `Inc.`, `p.m.`, ...).
const OPENERS: &[&str] = &[
    "A",
    "An",
    "The",
    "He",
    "She",
    "It",
    "They",
    "We",
    "I",
    "You",
    "His",
    "Her",
    "Its",
    "Their",
    "Our",
    "My",
    "Your",
    "This",
    "That",
    "These",
    "Those",
    "There",
    "Here",
    "But",
    "And",
    "Or",
    "So",
    "Yet",
    "Then",
    "Now",
    "However",
    "Meanwhile",
    "Still",
    "Also",
    "In",
    "On",
    "At",
    "For",
    "From",
    "With",
    "By",
    "After",
    "Before",
    "During",
    "When",
    "While",
    "If",
    "As",
    "Although",
    "Though",
    "Since",
    "Because",
    "What",
    "Who",
    "Why",
    "How",
    "Where",
    "Which",
    "Some",
    "Many",
    "Most",
    "All",
    "Both",
    "Each",
    "Several",
    "According",
];

/// Decides a terminator run that is followed by whitespace and a word `next`
/// not starting lowercase. `sentence` is the text from the start of the
/// current sentence up to the run, and `run` the run itself.
fn period_ends_sentence(sentence: &str, run: &str, next: &str) -> bool {
    // "?", "!", "..." and mixed runs end a sentence whatever precedes them;
    // only a lone "." can belong to an abbreviation.
    let mut terminators = run.chars().filter(|&c| is_terminator(c));
    if !(terminators.next() == Some('.') && terminators.next().is_none()) {
        return true;
    }
    let word_start = sentence.rfind(char::is_whitespace).map_or(0, |b| {
        b + sentence[b..].chars().next().map_or(1, char::len_utf8)
    });
    // The word the period ends, without leading quotes or brackets: `("Dr`.
    let word = sentence[word_start..].trim_start_matches(|c: char| is_opener(c) || c == '-');
    if word.is_empty() {
        return true;
    }
    // A short number or a single letter opening the sentence is a list
    // marker ("1. The first point"), not a sentence of its own.
    if word_start == 0
        && (word.chars().count() == 1
            || (word.len() <= 2 && word.chars().all(|c| c.is_ascii_digit())))
    {
        return false;
    }
    let next_is_number = next.chars().next().is_some_and(|c| c.is_ascii_digit());
    let next_is_opener = OPENERS.contains(&next);
    let lower = word.to_lowercase();

    if is_title(word) || NEVER_FINAL.contains(&lower.as_str()) {
        return false;
    }
    if next_is_number && BEFORE_NUMBER.contains(&lower.as_str()) {
        return false;
    }
    if MAYBE_FINAL.contains(&lower.as_str()) {
        return next_is_opener;
    }
    if is_dotted_abbreviation(word) {
        // `e.g.` and `i.e.` introduce examples, never end a sentence.
        if matches!(lower.as_str(), "e.g" | "i.e" | "a.k.a" | "n.b") {
            return false;
        }
        return next_is_opener;
    }
    if is_initial(word) {
        // `J. K. Rowling` goes on, but `a grade A. The data` ends.
        return next_is_opener;
    }
    true
}

fn is_title(word: &str) -> bool {
    let shouted = word.len() > 1 && word.chars().all(|c| c.is_ascii_uppercase());
    TITLES
        .iter()
        .any(|t| *t == word || (shouted && t.eq_ignore_ascii_case(word)))
}

/// A single capital letter (an initial, `J. K. Rowling`). `I` is left out:
/// as a pronoun it ends sentences (`... than I. Then`).
fn is_initial(word: &str) -> bool {
    let mut cs = word.chars();
    matches!((cs.next(), cs.next()), (Some(c), None) if c.is_uppercase() && c != 'I')
}

/// Letters joined by periods, with short segments: `U.S`, `p.m`, `Ph.D`,
/// `F.B.I` (the final period is the one being decided). `bbc.co.uk` and
/// `3.5` do not qualify.
fn is_dotted_abbreviation(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            let n = p.chars().count();
            (1..=3).contains(&n) && p.chars().all(char::is_alphabetic)
        })
}

/// Pushes `s` trimmed, cut into bounded pieces if it is over-long.
fn push_bounded<'a>(s: &'a str, out: &mut Vec<&'a str>) {
    let mut rest = s.trim();
    while rest.chars().count() > MAX_SENTENCE_CHARS {
        let cut = long_cut(rest);
        let (head, tail) = rest.split_at(cut);
        let head = head.trim();
        if !head.is_empty() {
            out.push(head);
        }
        rest = tail.trim();
    }
    if !rest.is_empty() {
        out.push(rest);
    }
}

/// Where to cut an over-long sentence: a byte offset within its first
/// [`SPLIT_TARGET_CHARS`] characters, after a comma or semicolon in the
/// second half of that window if there is one (a clause boundary reads and
/// translates best), else at the last whitespace, else after the last
/// ideographic comma, else at the window's end.
fn long_cut(s: &str) -> usize {
    let window: Vec<(usize, char)> = s.char_indices().take(SPLIT_TARGET_CHARS + 1).collect();
    // Byte offset just after the char at index i.
    let after = |i: usize| window.get(i + 1).map_or(s.len(), |&(b, _)| b);
    let limit = SPLIT_TARGET_CHARS.min(window.len()) - 1;
    let half = SPLIT_TARGET_CHARS / 2;
    let clause = (half..limit).rev().find(|&i| {
        matches!(window[i].1, ',' | ';' | '،' | '؛')
            && window.get(i + 1).is_some_and(|&(_, c)| c.is_whitespace())
    });
    if let Some(i) = clause {
        return after(i);
    }
    if let Some(i) = (1..=limit).rev().find(|&i| window[i].1.is_whitespace()) {
        return window[i].0;
    }
    if let Some(i) = (1..limit)
        .rev()
        .find(|&i| matches!(window[i].1, '，' | '、' | '；' | '：'))
    {
        return after(i);
    }
    window[limit].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Vec<&str> {
        sentences(text)
    }

    #[test]
    fn simple_terminators() {
        assert_eq!(
            s("Hello world. How are you? I am fine! Thanks."),
            ["Hello world.", "How are you?", "I am fine!", "Thanks."]
        );
        assert_eq!(s("Wait?! Really?"), ["Wait?!", "Really?"]);
        assert_eq!(s("No terminator at the end"), ["No terminator at the end"]);
        assert!(s("").is_empty());
        assert!(s("   ").is_empty());
    }

    #[test]
    fn titles_do_not_split() {
        assert_eq!(
            s("Mr. Trump met Mrs. May and Dr. Ford. They talked."),
            ["Mr. Trump met Mrs. May and Dr. Ford.", "They talked."]
        );
        assert_eq!(
            s("Sen. Elizabeth Warren and Rep. Maxine Waters spoke with Gov. Brown and Gen. Smith in St. Louis."),
            ["Sen. Elizabeth Warren and Rep. Maxine Waters spoke with Gov. Brown and Gen. Smith in St. Louis."]
        );
        assert_eq!(
            s("Lifeguard Capt. Larry Giles said so. U.S. Sens. Lindsey Graham and Ms. Collins agreed."),
            [
                "Lifeguard Capt. Larry Giles said so.",
                "U.S. Sens. Lindsey Graham and Ms. Collins agreed."
            ]
        );
    }

    #[test]
    fn dotted_acronyms() {
        assert_eq!(
            s("The U.S. Navy said the U.K. and the U.N. Security Council agreed."),
            ["The U.S. Navy said the U.K. and the U.N. Security Council agreed."]
        );
        assert_eq!(
            s("Troops left the U.S. The war was over."),
            ["Troops left the U.S.", "The war was over."]
        );
        assert_eq!(
            s("The F.B.I. investigation ended. It found nothing in Washington, D.C. The city said so."),
            [
                "The F.B.I. investigation ended.",
                "It found nothing in Washington, D.C.",
                "The city said so."
            ]
        );
    }

    #[test]
    fn times() {
        assert_eq!(
            s("It happened at 10 a.m. near the beach. A rally starts at 7 p.m. ET tonight."),
            [
                "It happened at 10 a.m. near the beach.",
                "A rally starts at 7 p.m. ET tonight."
            ]
        );
        assert_eq!(
            s("The meeting ended at 5 p.m. The vote is tomorrow."),
            ["The meeting ended at 5 p.m.", "The vote is tomorrow."]
        );
    }

    #[test]
    fn examples_and_latin() {
        assert_eq!(
            s("Fruit, e.g. Apples, is good. Some, i.e. Most, agree. Roe v. Wade stands."),
            [
                "Fruit, e.g. Apples, is good.",
                "Some, i.e. Most, agree.",
                "Roe v. Wade stands."
            ]
        );
        assert_eq!(
            s("Chelsea vs. Arsenal ended 2-1. Fans left."),
            ["Chelsea vs. Arsenal ended 2-1.", "Fans left."]
        );
        assert_eq!(
            s("They sold apples, pears, etc. The market closed."),
            ["They sold apples, pears, etc.", "The market closed."]
        );
        assert_eq!(
            s("Apples, pears, etc. were sold."),
            ["Apples, pears, etc. were sold."]
        );
    }

    #[test]
    fn companies() {
        assert_eq!(
            s("Apple Inc. Chief Executive Tim Cook spoke. Acme Ltd. said it would appeal."),
            [
                "Apple Inc. Chief Executive Tim Cook spoke.",
                "Acme Ltd. said it would appeal."
            ]
        );
        assert_eq!(
            s("He works for Acme Inc. The firm is big."),
            ["He works for Acme Inc.", "The firm is big."]
        );
    }

    #[test]
    fn months_and_numbers() {
        assert_eq!(
            s("It started on Dec. 26 and ended on Jan. 5, 2005. No. 10 Downing St. was quiet."),
            [
                "It started on Dec. 26 and ended on Jan. 5, 2005.",
                "No. 10 Downing St. was quiet."
            ]
        );
        assert_eq!(
            s("Growth was 3.5 per cent in version 1.2.3 of the plan. It rose."),
            [
                "Growth was 3.5 per cent in version 1.2.3 of the plan.",
                "It rose."
            ]
        );
        assert_eq!(
            s("The year was 2019. 2020 was worse."),
            ["The year was 2019.", "2020 was worse."]
        );
        assert_eq!(
            s("She is ranked no. 1 in the world. Vol. 2 is out."),
            ["She is ranked no. 1 in the world.", "Vol. 2 is out."]
        );
    }

    #[test]
    fn initials() {
        assert_eq!(
            s("J. K. Rowling met George W. Bush. They spoke."),
            ["J. K. Rowling met George W. Bush.", "They spoke."]
        );
        assert_eq!(
            s("Most achieved a grade A. The data showed it. John F. Kennedy had it."),
            [
                "Most achieved a grade A.",
                "The data showed it.",
                "John F. Kennedy had it."
            ]
        );
        assert_eq!(
            s("Nobody was happier than I. Then it rained."),
            ["Nobody was happier than I.", "Then it rained."]
        );
    }

    #[test]
    fn quotes_and_brackets_stay_with_their_sentence() {
        assert_eq!(
            s("He said \"no.\" Then he left."),
            ["He said \"no.\"", "Then he left."]
        );
        assert_eq!(
            s("She shouted, 'I got bit!'\" he said. (It was bad.) Later: fine."),
            [
                "She shouted, 'I got bit!'\" he said.",
                "(It was bad.)",
                "Later: fine."
            ]
        );
        assert_eq!(
            s("“We won.” “Really?” he asked."),
            ["“We won.”", "“Really?” he asked."]
        );
        assert_eq!(
            s("\"Do they think I get a discount?\" she wondered. Why? she asked."),
            [
                "\"Do they think I get a discount?\" she wondered.",
                "Why? she asked."
            ]
        );
    }

    #[test]
    fn ellipses() {
        assert_eq!(
            s("Remember her answer... did you leak it? Wait… Then nothing."),
            [
                "Remember her answer... did you leak it?",
                "Wait…",
                "Then nothing."
            ]
        );
        assert_eq!(
            s("Did we leak...No, we didn't."),
            ["Did we leak...No, we didn't."]
        );
    }

    #[test]
    fn lowercase_after_period_does_not_split() {
        assert_eq!(
            s("The approx. figure is the one from govt. sources."),
            ["The approx. figure is the one from govt. sources."]
        );
        assert_eq!(
            s("He saw the Gov. at 3 p.m. on Friday."),
            ["He saw the Gov. at 3 p.m. on Friday."]
        );
    }

    #[test]
    fn urls_and_emails_stay_whole() {
        assert_eq!(
            s("See bbc.co.uk/news or mail a.b@example.com today. Done."),
            ["See bbc.co.uk/news or mail a.b@example.com today.", "Done."]
        );
        assert_eq!(
            s("Visit www.example.com. It is new."),
            ["Visit www.example.com.", "It is new."]
        );
    }

    #[test]
    fn persian_and_arabic() {
        assert_eq!(
            s("دولت بودجه را اعلام کرد. آیا این درست است؟ بله."),
            ["دولت بودجه را اعلام کرد.", "آیا این درست است؟", "بله."]
        );
        // "؟" needs no following space.
        assert_eq!(s("چرا؟بله."), ["چرا؟", "بله."]);
        assert_eq!(s("ما هذا؟ لا شيء."), ["ما هذا؟", "لا شيء."]);
    }

    #[test]
    fn cjk_without_spaces() {
        assert_eq!(
            s("今天天气很好。我们去公园吧！你来吗？好的。"),
            ["今天天气很好。", "我们去公园吧！", "你来吗？", "好的。"]
        );
        assert_eq!(
            s("「行くよ。」と彼は言った。本当？"),
            ["「行くよ。」", "と彼は言った。", "本当？"]
        );
    }

    #[test]
    fn hindi_danda() {
        assert_eq!(
            s("सरकार ने बजट पेश किया। यह अच्छा है।अगला वाक्य।"),
            ["सरकार ने बजट पेश किया।", "यह अच्छा है।", "अगला वाक्य।"]
        );
    }

    #[test]
    fn greek_question_mark_is_not_a_terminator() {
        // Both the ASCII ';' and U+037E GREEK QUESTION MARK stay inside.
        assert_eq!(
            s("Τι κάνεις; Καλά είμαι. Πού πας\u{37e} Σπίτι."),
            ["Τι κάνεις; Καλά είμαι.", "Πού πας\u{37e} Σπίτι."]
        );
    }

    #[test]
    fn lowercase_scripts_follow_the_lowercase_rule() {
        assert_eq!(
            s("Он сказал: «Нет». Потом ушёл. т. е. всё."),
            ["Он сказал: «Нет».", "Потом ушёл. т. е. всё."]
        );
    }

    #[test]
    fn long_sentences_are_bounded() {
        // 600+ characters with commas and no terminator.
        let clause = "the committee heard evidence from many witnesses";
        let long = vec![clause; 14].join(", ");
        let pieces = s(&long);
        assert!(pieces.len() >= 2, "{pieces:?}");
        for p in &pieces[..pieces.len() - 1] {
            assert!(p.chars().count() <= SPLIT_TARGET_CHARS, "{}", p.len());
        }
        assert!(pieces
            .iter()
            .all(|p| p.chars().count() <= MAX_SENTENCE_CHARS));
        // Cut after a comma, which stays with the first piece.
        assert!(pieces[0].ends_with(','), "{:?}", pieces[0]);
        assert!(pieces[0].chars().count() >= SPLIT_TARGET_CHARS / 2);
        // Nothing lost: the pieces rebuild the input up to whitespace.
        assert_eq!(pieces.join(" "), long);

        // No commas: cut at whitespace.
        let words = vec!["word"; 200].join(" ");
        let pieces = s(&words);
        assert!(pieces
            .iter()
            .all(|p| p.chars().count() <= MAX_SENTENCE_CHARS));
        assert_eq!(pieces.join(" "), words);

        // No spaces at all (CJK without terminators): cut at a char boundary.
        let cjk = "漢".repeat(1000);
        let pieces = s(&cjk);
        assert!(pieces
            .iter()
            .all(|p| p.chars().count() <= MAX_SENTENCE_CHARS));
        assert_eq!(pieces.concat(), cjk);

        // Exactly at the limit: untouched.
        let edge = "a".repeat(MAX_SENTENCE_CHARS);
        assert_eq!(s(&edge), [edge.as_str()]);
    }

    #[test]
    fn unicode_safety_on_odd_input() {
        // Multi-byte chars next to every kind of boundary must not panic
        // and must give slices of the input.
        let inputs = [
            "é. é. ü? ß! 漢。字",
            "Ü.S. Öl. ‘Ä.’ „Ö.“ «É.» ",
            "...",
            ". . .",
            "?",
            "\u{200c}.\u{200c} x",
            "a.\u{00a0}B",
            "Mr.",
            "Mr. ",
            "(Dr.) (\"Ms.\") Go.",
        ];
        for text in inputs {
            for piece in s(text) {
                assert!(!piece.is_empty());
                assert_eq!(piece, piece.trim());
                let start = piece.as_ptr() as usize - text.as_ptr() as usize;
                assert!(text.is_char_boundary(start));
                assert!(text.is_char_boundary(start + piece.len()));
            }
        }
    }

    #[test]
    fn paragraphs_split_on_any_line_break() {
        let text = "  First para. Two.  \n\nSecond\r\nThird\n \n\t\nFourth\u{2029}Fifth\n";
        assert_eq!(
            paragraphs(text),
            ["First para. Two.", "Second", "Third", "Fourth", "Fifth"]
        );
        assert!(paragraphs("\n\n  \n").is_empty());
        assert!(paragraphs("").is_empty());
    }

    #[test]
    fn segment_nests_sentences_in_paragraphs() {
        let text = "One. Two.\n\nThree? Four!\nFive";
        assert_eq!(
            segment(text),
            vec![vec!["One.", "Two."], vec!["Three?", "Four!"], vec!["Five"]]
        );
        assert!(segment("  \n ").is_empty());
    }

    /// Agreement with the NTREX-128 sentence segmentation (English news,
    /// WMT19 newstest sources). The article `text` joins the gold sentences
    /// with single spaces, so an exact match of the whole list is a strict
    /// test. Missing data is a note locally but a failure in CI.
    #[test]
    fn ntrex_agreement() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/ntrex/ntrex-dev.jsonl"
        );
        let data = match std::fs::read_to_string(path) {
            Ok(d) => d,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "NTREX data missing in CI: {path}: {e}"
                );
                eprintln!("note: skipping NTREX agreement test, {path}: {e}");
                return;
            }
        };
        let (mut articles, mut exact_articles) = (0, 0);
        let (mut gold_total, mut found) = (0, 0);
        for line in data.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("valid JSONL");
            let text = v["text"].as_str().expect("text");
            let gold: Vec<&str> = v["sentences"].as_array().expect("sentences")[1..]
                .iter()
                .map(|s| s.as_str().expect("sentence").trim())
                .collect();
            let ours = sentences(text);
            // Segmentation only ever cuts at spaces here: nothing is lost.
            assert_eq!(ours.join(" "), text);
            articles += 1;
            if ours == gold {
                exact_articles += 1;
            } else if std::env::var_os("TIDINGS_NTREX_DIFF").is_some() {
                // Debugging aid: show what we produced that gold did not.
                for o in ours.iter().filter(|o| !gold.contains(o)) {
                    eprintln!("ours: {o}");
                }
                for g in gold.iter().filter(|g| !ours.contains(g)) {
                    eprintln!("gold: {g}");
                }
                eprintln!("--");
            }
            // A gold sentence counts as found when we produced it exactly.
            gold_total += gold.len();
            let mut ours_sorted = ours.clone();
            ours_sorted.sort_unstable();
            found += gold
                .iter()
                .filter(|g| ours_sorted.binary_search(g).is_ok())
                .count();
        }
        let article_rate = exact_articles as f64 / articles as f64;
        let sentence_rate = found as f64 / gold_total as f64;
        eprintln!(
            "NTREX agreement: {exact_articles}/{articles} articles exact ({:.1}%), \
             {found}/{gold_total} gold sentences found ({:.1}%)",
            article_rate * 100.0,
            sentence_rate * 100.0
        );
        assert_eq!(articles, 82);
        // Measured: 1226/1263 sentences (97.1%), 68/82 articles (82.9%). Most
        // misses are headline lists with no punctuation at all (no rule can
        // split those) and a few inconsistencies in the references.
        assert!(sentence_rate >= 0.965, "sentence agreement {sentence_rate}");
        assert!(article_rate >= 0.80, "article agreement {article_rate}");
    }
}
