//! A template is data: format strings over a record's fields, defined once for Rust and Python,
//! e.g. `{"prompt": "{dialogue}###", "target": "{summary}", "eos": true}`. `{{` and `}}` are
//! literal braces. Field values that are not strings are written as compact JSON (numbers as
//! digits, so a GLUE label 1 renders as `1`).
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Field(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    prompt: String,
    #[serde(default)]
    target: Option<String>,
    /// Append the end-of-sequence token after the target (the reference does).
    #[serde(default = "yes")]
    eos: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    spec: Spec,
    prompt: Vec<Seg>,
    target: Vec<Seg>,
}

fn parse_format(s: &str, what: &str) -> Result<Vec<Seg>> {
    let mut segs = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => {
                            return Err(Error::invalid(format!(
                                "template {what}: unclosed '{{' in {s:?} (write '{{{{' for a literal brace)"
                            )))
                        }
                        Some(c) => name.push(c),
                    }
                }
                let name = name.trim().to_string();
                if name.is_empty() {
                    return Err(Error::invalid(format!(
                        "template {what}: empty field name in {s:?}"
                    )));
                }
                if !lit.is_empty() {
                    segs.push(Seg::Lit(std::mem::take(&mut lit)));
                }
                segs.push(Seg::Field(name));
            }
            '}' => {
                return Err(Error::invalid(format!(
                    "template {what}: unmatched '}}' in {s:?} (write '}}}}' for a literal brace)"
                )))
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        segs.push(Seg::Lit(lit));
    }
    Ok(segs)
}

impl Template {
    pub fn parse(json: &str) -> Result<Template> {
        let spec: Spec = serde_json::from_str(json).map_err(|e| {
            Error::invalid(format!(
                "invalid template {json}: {e} (expected {{\"prompt\": str, \"target\": str, \"eos\": bool}})"
            ))
        })?;
        let prompt = parse_format(&spec.prompt, "prompt")?;
        let target = match &spec.target {
            Some(t) => parse_format(t, "target")?,
            None => Vec::new(),
        };
        Ok(Template {
            spec,
            prompt,
            target,
        })
    }

    /// Canonical JSON of the template (part of cache keys).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.spec).expect("a template always serialises")
    }

    pub fn eos(&self) -> bool {
        self.spec.eos
    }

    pub fn has_target(&self) -> bool {
        self.spec.target.is_some()
    }

    /// Names of the fields the template reads, in order of first use.
    pub fn fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in self.prompt.iter().chain(&self.target) {
            if let Seg::Field(f) = s {
                if !out.contains(&f.as_str()) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// Renders (prompt, target) from a JSON object. Errors name the missing field; the caller
    /// adds the file and line.
    pub fn render(&self, record: &Value) -> Result<(String, String), String> {
        let obj = record
            .as_object()
            .ok_or_else(|| format!("expected a JSON object, got {}", kind(record)))?;
        let one = |segs: &[Seg]| -> Result<String, String> {
            let mut out = String::new();
            for s in segs {
                match s {
                    Seg::Lit(l) => out.push_str(l),
                    Seg::Field(f) => match obj.get(f) {
                        Some(Value::String(v)) => out.push_str(v),
                        Some(Value::Null) | None => {
                            let mut have: Vec<&String> = obj.keys().collect();
                            have.sort();
                            return Err(format!("missing field {f:?} (record has {have:?})"));
                        }
                        Some(v) => out.push_str(&v.to_string()),
                    },
                }
            }
            Ok(out)
        };
        Ok((one(&self.prompt)?, one(&self.target)?))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
