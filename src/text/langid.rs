//! Languages: the table of ISO 639-1 codes the job config accepts, and
//! source-language detection.
//!
//! Detection uses the `whatlang` crate (trigram profiles, 70 languages, no
//! model files); we only map its ISO 639-3 codes onto the 639-1 codes the job
//! and the output records use. Text too short or too mixed to call reliably
//! is reported as undetected and the pipeline falls back to the job's
//! `input.lang` default (English unless set).

use whatlang::Lang;

/// A language the job may name as a source or target.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Language {
    /// ISO 639-1 code, as used in configs and output (`"es"`).
    pub code: &'static str,
    /// English name, as used in prompts (`"Spanish"`).
    pub name: &'static str,
    /// The `whatlang` language, when it can detect this one.
    pub detect: Option<Lang>,
}

macro_rules! languages {
    ($( $code:literal, $name:literal, $detect:expr; )*) => {
        /// Every language the job config accepts, by ISO 639-1 code.
        pub static LANGUAGES: &[Language] = &[
            $( Language { code: $code, name: $name, detect: $detect }, )*
        ];
    };
}

languages! {
    "af", "Afrikaans", Some(Lang::Afr);
    "am", "Amharic", Some(Lang::Amh);
    "ar", "Arabic", Some(Lang::Ara);
    "az", "Azerbaijani", Some(Lang::Aze);
    "be", "Belarusian", Some(Lang::Bel);
    "bg", "Bulgarian", Some(Lang::Bul);
    "bn", "Bengali", Some(Lang::Ben);
    "ca", "Catalan", Some(Lang::Cat);
    "cs", "Czech", Some(Lang::Ces);
    "cy", "Welsh", None;
    "da", "Danish", Some(Lang::Dan);
    "de", "German", Some(Lang::Deu);
    "el", "Greek", Some(Lang::Ell);
    "en", "English", Some(Lang::Eng);
    "eo", "Esperanto", Some(Lang::Epo);
    "es", "Spanish", Some(Lang::Spa);
    "et", "Estonian", Some(Lang::Est);
    "eu", "Basque", None;
    "fa", "Persian", Some(Lang::Pes);
    "fi", "Finnish", Some(Lang::Fin);
    "fr", "French", Some(Lang::Fra);
    "ga", "Irish", None;
    "gu", "Gujarati", Some(Lang::Guj);
    "he", "Hebrew", Some(Lang::Heb);
    "hi", "Hindi", Some(Lang::Hin);
    "hr", "Croatian", Some(Lang::Hrv);
    "hu", "Hungarian", Some(Lang::Hun);
    "hy", "Armenian", Some(Lang::Hye);
    "id", "Indonesian", Some(Lang::Ind);
    "it", "Italian", Some(Lang::Ita);
    "ja", "Japanese", Some(Lang::Jpn);
    "jv", "Javanese", Some(Lang::Jav);
    "ka", "Georgian", Some(Lang::Kat);
    "kk", "Kazakh", None;
    "km", "Khmer", Some(Lang::Khm);
    "kn", "Kannada", Some(Lang::Kan);
    "ko", "Korean", Some(Lang::Kor);
    "la", "Latin", Some(Lang::Lat);
    "lt", "Lithuanian", Some(Lang::Lit);
    "lv", "Latvian", Some(Lang::Lav);
    "mk", "Macedonian", Some(Lang::Mkd);
    "ml", "Malayalam", Some(Lang::Mal);
    "mr", "Marathi", Some(Lang::Mar);
    "ms", "Malay", None;
    "my", "Burmese", Some(Lang::Mya);
    "ne", "Nepali", Some(Lang::Nep);
    "nl", "Dutch", Some(Lang::Nld);
    "no", "Norwegian", Some(Lang::Nob);
    "or", "Odia", Some(Lang::Ori);
    "pa", "Punjabi", Some(Lang::Pan);
    "pl", "Polish", Some(Lang::Pol);
    "ps", "Pashto", None;
    "pt", "Portuguese", Some(Lang::Por);
    "ro", "Romanian", Some(Lang::Ron);
    "ru", "Russian", Some(Lang::Rus);
    "si", "Sinhala", Some(Lang::Sin);
    "sk", "Slovak", Some(Lang::Slk);
    "sl", "Slovenian", Some(Lang::Slv);
    "sn", "Shona", Some(Lang::Sna);
    "sq", "Albanian", None;
    "sr", "Serbian", Some(Lang::Srp);
    "sv", "Swedish", Some(Lang::Swe);
    "sw", "Swahili", None;
    "ta", "Tamil", Some(Lang::Tam);
    "te", "Telugu", Some(Lang::Tel);
    "th", "Thai", Some(Lang::Tha);
    "tk", "Turkmen", Some(Lang::Tuk);
    "tl", "Tagalog", Some(Lang::Tgl);
    "tr", "Turkish", Some(Lang::Tur);
    "uk", "Ukrainian", Some(Lang::Ukr);
    "ur", "Urdu", Some(Lang::Urd);
    "uz", "Uzbek", Some(Lang::Uzb);
    "vi", "Vietnamese", Some(Lang::Vie);
    "yi", "Yiddish", Some(Lang::Yid);
    "zh", "Chinese", Some(Lang::Cmn);
    "zu", "Zulu", Some(Lang::Zul);
}

/// Lowest `whatlang` confidence accepted (see [`detect`]).
const MIN_CONFIDENCE: f64 = 0.5;

/// Looks a language up by its ISO 639-1 code (case-insensitive).
pub fn lookup(code: &str) -> Option<&'static Language> {
    LANGUAGES.iter().find(|l| l.code.eq_ignore_ascii_case(code))
}

/// Detects the language of `text`; `None` when unknown or too uncertain.
///
/// `whatlang` calls a result reliable only at high confidence, which a
/// single short sentence rarely reaches even when the call is right (a
/// one-sentence Spanish text scores about 0.55); we accept a confidence of
/// 0.5 or more, and articles, being longer, score far higher.
///
/// Only the first few thousand characters are looked at: that is plenty for
/// trigram statistics and keeps detection cheap on very long articles.
pub fn detect(text: &str) -> Option<&'static Language> {
    let mut end = text.len().min(4000);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let info = whatlang::detect(&text[..end])?;
    if !info.is_reliable() && info.confidence() < MIN_CONFIDENCE {
        return None;
    }
    LANGUAGES.iter().find(|l| l.detect == Some(info.lang()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_rejects_unknown() {
        assert_eq!(lookup("ES").unwrap().name, "Spanish");
        assert_eq!(lookup("fa").unwrap().name, "Persian");
        assert!(lookup("xx").is_none());
        assert!(lookup("spa").is_none());
    }

    #[test]
    fn detects_english_spanish_persian() {
        let en = "The government said on Tuesday that the new budget would be published next week.";
        let es =
            "El gobierno dijo el martes que el nuevo presupuesto se publicará la próxima semana.";
        let fa = "دولت روز سه‌شنبه اعلام کرد که بودجه جدید هفته آینده منتشر خواهد شد.";
        assert_eq!(detect(en).unwrap().code, "en");
        assert_eq!(detect(es).unwrap().code, "es");
        assert_eq!(detect(fa).unwrap().code, "fa");
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = LANGUAGES.iter().map(|l| l.code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), LANGUAGES.len());
    }
}
