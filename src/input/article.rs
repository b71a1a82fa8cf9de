//! One input record: either an [`Article`] ready for the pipeline or a
//! [`RecordFailure`] that goes to the errors file. Turning a raw JSONL line
//! into one of the two is [`parse_line`], a pure function the pipeline runs
//! on many lines at once with rayon.

use serde::Serialize;
use serde_json::Value;

/// A well-formed article.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Article {
    /// 1-based line number in the input.
    pub line: u64,
    /// The record's id (the line number when the record has none).
    pub id: String,
    /// The headline, if the record has one.
    pub title: Option<String>,
    /// The body text, non-empty.
    pub text: String,
}

/// Why a record could not be processed; the `kind` field of the errors file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The line is not a JSON object.
    InvalidJson,
    /// The line is not valid UTF-8.
    InvalidUtf8,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// The text is empty or only whitespace (also after cleaning).
    EmptyText,
    /// The text is longer than `input.max-bytes`.
    TooLong,
    /// The id was already seen earlier in the input.
    DuplicateId,
    /// A model failed on this record.
    Model,
}

/// A record that goes to the errors file (or inline, with `--errors inline`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordFailure {
    /// 1-based line number in the input.
    pub line: u64,
    /// The id, when the line was readable enough to have one.
    pub id: Option<String>,
    /// What went wrong.
    pub kind: FailureKind,
    /// The field at fault, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The input file (or `-` for stdin).
    pub file: String,
    /// A sentence a person can act on.
    pub message: String,
}

/// One input line after parsing.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Ready for the pipeline.
    Ok(Article),
    /// Goes to the errors file.
    Failed(RecordFailure),
}

impl Record {
    /// The record's line number.
    pub fn line(&self) -> u64 {
        match self {
            Record::Ok(a) => a.line,
            Record::Failed(f) => f.line,
        }
    }

    /// The id used for sharding, resume and duplicate checks: the record's
    /// id, or its line number when it has none or could not be parsed.
    pub fn key(&self) -> String {
        match self {
            Record::Ok(a) => a.id.clone(),
            Record::Failed(f) => f.id.clone().unwrap_or_else(|| f.line.to_string()),
        }
    }
}

/// Names of the JSON fields the job reads.
#[derive(Debug, Clone)]
pub struct FieldMap {
    /// Field holding the id.
    pub id: String,
    /// Field holding the headline.
    pub title: String,
    /// Field holding the body.
    pub text: String,
    /// Longest accepted body, in bytes.
    pub max_bytes: usize,
    /// The input's name for error records.
    pub file: String,
}

/// Parses one raw line (without its newline) into a record.
pub fn parse_line(line: u64, bytes: &[u8], fields: &FieldMap) -> Record {
    let fail = |id: Option<String>, kind, field: Option<&str>, message: String| {
        Record::Failed(RecordFailure {
            line,
            id,
            kind,
            field: field.map(str::to_string),
            file: fields.file.clone(),
            message,
        })
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return fail(
                None,
                FailureKind::InvalidUtf8,
                None,
                format!(
                    "{}:{line}: invalid UTF-8 at byte {}",
                    fields.file,
                    e.valid_up_to()
                ),
            )
        }
    };
    let mut obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => o,
        Ok(other) => {
            return fail(
                None,
                FailureKind::InvalidJson,
                None,
                format!(
                    "{}:{line}: expected a JSON object, found {}",
                    fields.file,
                    json_type(&other)
                ),
            )
        }
        Err(e) => {
            return fail(
                None,
                FailureKind::InvalidJson,
                None,
                format!("{}:{line}: invalid JSON: {e}", fields.file),
            )
        }
    };
    let id = match obj.remove(&fields.id) {
        None | Some(Value::Null) => line.to_string(),
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(Value::String(_)) => {
            return fail(
                None,
                FailureKind::WrongType,
                Some(&fields.id),
                format!(
                    "{}:{line}: field `{}` is an empty string",
                    fields.file, fields.id
                ),
            )
        }
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return fail(
                None,
                FailureKind::WrongType,
                Some(&fields.id),
                format!(
                    "{}:{line}: field `{}` must be a string or number, found {}",
                    fields.file,
                    fields.id,
                    json_type(&other)
                ),
            )
        }
    };
    let title = match obj.remove(&fields.title) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s).filter(|s| !s.trim().is_empty()),
        Some(other) => {
            return fail(
                Some(id),
                FailureKind::WrongType,
                Some(&fields.title),
                format!(
                    "{}:{line}: field `{}` must be a string, found {}",
                    fields.file,
                    fields.title,
                    json_type(&other)
                ),
            )
        }
    };
    let body = match obj.remove(&fields.text) {
        None | Some(Value::Null) => {
            return fail(
                Some(id),
                FailureKind::MissingField,
                Some(&fields.text),
                format!("{}:{line}: field `{}` is missing", fields.file, fields.text),
            )
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return fail(
                Some(id),
                FailureKind::WrongType,
                Some(&fields.text),
                format!(
                    "{}:{line}: field `{}` must be a string, found {}",
                    fields.file,
                    fields.text,
                    json_type(&other)
                ),
            )
        }
    };
    if body.trim().is_empty() {
        return fail(
            Some(id),
            FailureKind::EmptyText,
            Some(&fields.text),
            format!("{}:{line}: field `{}` is empty", fields.file, fields.text),
        );
    }
    if body.len() > fields.max_bytes {
        return fail(
            Some(id),
            FailureKind::TooLong,
            Some(&fields.text),
            format!(
                "{}:{line}: field `{}` has {} bytes, more than input.max-bytes = {}",
                fields.file,
                fields.text,
                body.len(),
                fields.max_bytes
            ),
        );
    }
    Record::Ok(Article {
        line,
        id,
        title,
        text: body,
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> FieldMap {
        FieldMap {
            id: "id".into(),
            title: "title".into(),
            text: "text".into(),
            max_bytes: 100,
            file: "in.jsonl".into(),
        }
    }

    fn kind(line: &str) -> Option<FailureKind> {
        match parse_line(7, line.as_bytes(), &fields()) {
            Record::Ok(_) => None,
            Record::Failed(f) => Some(f.kind),
        }
    }

    #[test]
    fn good_record() {
        let r = parse_line(3, br#"{"id":5,"title":"T","text":"Hello."}"#, &fields());
        assert_eq!(
            r,
            Record::Ok(Article {
                line: 3,
                id: "5".into(),
                title: Some("T".into()),
                text: "Hello.".into()
            })
        );
        let r = parse_line(3, br#"{"text":"Hello."}"#, &fields());
        assert_eq!(r.key(), "3");
    }

    #[test]
    fn each_failure_kind() {
        assert_eq!(kind("{not json"), Some(FailureKind::InvalidJson));
        assert_eq!(kind("[1,2]"), Some(FailureKind::InvalidJson));
        assert_eq!(kind(r#"{"id":"a"}"#), Some(FailureKind::MissingField));
        assert_eq!(kind(r#"{"id":"a","text":3}"#), Some(FailureKind::WrongType));
        assert_eq!(
            kind(r#"{"id":[1],"text":"x"}"#),
            Some(FailureKind::WrongType)
        );
        assert_eq!(
            kind(r#"{"id":"a","title":{},"text":"x"}"#),
            Some(FailureKind::WrongType)
        );
        assert_eq!(
            kind(r#"{"id":"a","text":"  "}"#),
            Some(FailureKind::EmptyText)
        );
        let long = format!(r#"{{"id":"a","text":"{}"}}"#, "x".repeat(101));
        assert_eq!(kind(&long), Some(FailureKind::TooLong));
        let bad = parse_line(9, b"{\"text\":\"\xff\"}", &fields());
        match bad {
            Record::Failed(f) => {
                assert_eq!(f.kind, FailureKind::InvalidUtf8);
                assert!(f.message.contains("in.jsonl:9"), "{}", f.message);
            }
            _ => panic!("accepted invalid UTF-8"),
        }
    }

    #[test]
    fn failure_names_file_line_and_field() {
        match parse_line(12, br#"{"id":"a","text":3}"#, &fields()) {
            Record::Failed(f) => {
                assert_eq!(f.field.as_deref(), Some("text"));
                assert_eq!(f.id.as_deref(), Some("a"));
                assert!(f.message.starts_with("in.jsonl:12:"), "{}", f.message);
            }
            _ => panic!(),
        }
    }
}
