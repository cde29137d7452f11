//! Step inputs from earlier steps' outputs: a string in a step's `data` may name a value of
//! a step it `needs`, as `${{ steps.<id>.<path> }}`.
//!
//! - A string that is only a reference takes the value's type: `packages:
//!   "${{ steps.build.artifacts.*.name }}"` is a list of names.
//! - A reference inside other text must give a text, number or boolean, which is written
//!   into the text: `branch: "release/${{ steps.impact.json.version }}"`.
//!
//! Paths follow the step output (`StepOutput`, camelCase): `artifacts` (each with `name`,
//! `version`, `file`, `sizeBytes`, `sha256`; `*` for all, a number for one), `durationMs`,
//! `outputTail`, `commands`, and the untyped `json.<...>` and `files.<name>.<...>`. An
//! approval step gives `approved`, `by` and `comment`.
//!
//! A definition is checked when it is stored: the step must be one this step needs (the
//! engine hands a step its parents' outputs), the path must exist in that step's output, and
//! the data must still be valid with a value of the path's type in place. Orgs,
//! repositories, registries and sfp arguments never come from outputs: credentials are
//! granted from the stored definition, and sources are checked against the server's policy
//! once. The worker substitutes the values when the step starts and checks the data again.

use std::fmt;

use serde_json::Value;

/// Data fields a reference may not fill, at the top level of a step's data.
pub const FIXED_FIELDS: &[&str] = &["repository", "registry", "targetOrg", "devhub", "args"];

const OPEN: &str = "${{";
const CLOSE: &str = "}}";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Field(String),
    Index(usize),
    All,
}

/// `steps.<step>.<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub step: String,
    pub path: Vec<Segment>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "steps.{}", self.step)?;
        for s in &self.path {
            match s {
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(i) => write!(f, ".{i}")?,
                Segment::All => write!(f, ".*")?,
            }
        }
        Ok(())
    }
}

/// A piece of a string with references.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Ref(Reference),
}

/// Splits a string into text and references; `None` when it holds no `${{`.
fn pieces(s: &str) -> Option<Result<Vec<Piece>, String>> {
    if !s.contains(OPEN) {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find(OPEN) {
        if at > 0 {
            out.push(Piece::Text(rest[..at].to_string()));
        }
        let after = &rest[at + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else {
            return Some(Err("a reference opened with ${{ is never closed with }}".into()));
        };
        match parse_reference(after[..end].trim()) {
            Ok(r) => out.push(Piece::Ref(r)),
            Err(e) => return Some(Err(e)),
        }
        rest = &after[end + CLOSE.len()..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    Some(Ok(out))
}

fn parse_reference(text: &str) -> Result<Reference, String> {
    let mut parts = text.split('.');
    if parts.next() != Some("steps") {
        return Err(format!("{text:?} is not a reference; write steps.<step id>.<output path>"));
    }
    let step = parts.next().filter(|s| !s.is_empty()).ok_or_else(|| format!("{text:?} names no step"))?;
    let mut path = Vec::new();
    for part in parts {
        let segment = if part == "*" {
            Segment::All
        } else if let Ok(i) = part.parse::<usize>() {
            Segment::Index(i)
        } else if !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            Segment::Field(part.to_string())
        } else {
            return Err(format!("{text:?}: {part:?} is not a field name, an index or *"));
        };
        path.push(segment);
    }
    if path.is_empty() {
        return Err(format!("{text:?} names a step but no value of its output"));
    }
    if path.iter().filter(|s| **s == Segment::All).count() > 1 {
        return Err(format!("{text:?}: at most one * in a path"));
    }
    Ok(Reference { step: step.to_string(), path })
}

/// The shape of a value in a step output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Text,
    Number,
    Bool,
    /// Untyped (the command's `--json`, its files): checked when the step runs.
    Any,
    List(Box<Shape>),
    Artifact,
    TaskOutput,
    ApprovalOutput,
}

impl Shape {
    pub fn describe(&self) -> String {
        match self {
            Shape::Text => "a text".into(),
            Shape::Number => "a number".into(),
            Shape::Bool => "a boolean".into(),
            Shape::Any => "any value".into(),
            Shape::List(inner) => format!("a list of {}", inner.describe().trim_start_matches("a ")),
            Shape::Artifact => "an artifact (name, version, file, sizeBytes, sha256)".into(),
            Shape::TaskOutput | Shape::ApprovalOutput => "a whole step output".into(),
        }
    }

    fn field(&self, name: &str) -> Result<Shape, String> {
        let known: &[(&str, Shape)] = match self {
            Shape::TaskOutput => &[
                ("artifacts", Shape::List(Box::new(Shape::Artifact))),
                ("durationMs", Shape::Number),
                ("outputTail", Shape::List(Box::new(Shape::Text))),
                ("commands", Shape::List(Box::new(Shape::List(Box::new(Shape::Text))))),
                ("json", Shape::Any),
                ("files", Shape::Any),
            ],
            Shape::ApprovalOutput => &[("approved", Shape::Bool), ("by", Shape::Text), ("comment", Shape::Text)],
            Shape::Artifact => &[
                ("name", Shape::Text),
                ("version", Shape::Text),
                ("file", Shape::Text),
                ("sizeBytes", Shape::Number),
                ("sha256", Shape::Text),
            ],
            Shape::Any => return Ok(Shape::Any),
            other => return Err(format!("{} has no field {name:?}", other.describe())),
        };
        known.iter().find(|(n, _)| *n == name).map(|(_, s)| s.clone()).ok_or_else(|| {
            let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
            format!("{name:?} is not in {}; it has {}", self.describe(), names.join(", "))
        })
    }

    /// A value of this shape that the data checks accept where such a value fits.
    fn sample(&self) -> Value {
        match self {
            Shape::Text => Value::String("ref".into()),
            Shape::Number => Value::from(1),
            Shape::Bool => Value::Bool(true),
            Shape::List(inner) => Value::Array(vec![inner.sample()]),
            Shape::Any => Value::String("ref".into()),
            Shape::Artifact | Shape::TaskOutput | Shape::ApprovalOutput => Value::Object(Default::default()),
        }
    }
}

/// What a step referred to gives: a task's output or an approval's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Task,
    Approval,
}

/// The shape a reference's path has in the output of its step.
pub fn shape_of(source: Source, path: &[Segment]) -> Result<Shape, String> {
    let mut shape = match source {
        Source::Task => Shape::TaskOutput,
        Source::Approval => Shape::ApprovalOutput,
    };
    let mut spread = false;
    for segment in path {
        shape = match (segment, shape) {
            (Segment::Field(name), s) => s.field(name)?,
            (Segment::Index(_), Shape::List(inner)) => *inner,
            (Segment::All, Shape::List(inner)) => {
                spread = true;
                *inner
            }
            (_, Shape::Any) => Shape::Any,
            (_, s) => return Err(format!("{} is not a list", s.describe())),
        };
    }
    Ok(if spread { Shape::List(Box::new(shape)) } else { shape })
}

/// A reference found in a step's data, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The data path (`packages`, `registry.tag`, `releaseDefinitions[0]`).
    pub field: String,
    pub reference: Reference,
    /// The whole string is this reference (it takes the value's type).
    pub whole: bool,
}

/// Every reference in `data`; an error names the field of a malformed one.
pub fn find(data: &Value) -> Result<Vec<Found>, (String, String)> {
    let mut found = Vec::new();
    walk(data, String::new(), &mut found)?;
    Ok(found)
}

fn walk(value: &Value, at: String, found: &mut Vec<Found>) -> Result<(), (String, String)> {
    match value {
        Value::String(s) => match pieces(s) {
            None => Ok(()),
            Some(Err(e)) => Err((at, e)),
            Some(Ok(ps)) => {
                let whole = ps.len() == 1;
                for p in ps {
                    if let Piece::Ref(reference) = p {
                        found.push(Found { field: at.clone(), reference, whole });
                    }
                }
                Ok(())
            }
        },
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, format!("{at}[{i}]"), found)?;
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, v) in map {
                walk(v, if at.is_empty() { k.clone() } else { format!("{at}.{k}") }, found)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `data` with each reference replaced by what `value_of` gives for it. A whole-string
/// reference takes the value as it is; one inside text must give a scalar.
pub fn substitute(
    data: &Value,
    value_of: &mut dyn FnMut(&Reference) -> Result<Value, String>,
) -> Result<Value, (String, String)> {
    fn go(
        value: &Value,
        at: String,
        value_of: &mut dyn FnMut(&Reference) -> Result<Value, String>,
    ) -> Result<Value, (String, String)> {
        Ok(match value {
            Value::String(s) => match pieces(s) {
                None => value.clone(),
                Some(Err(e)) => return Err((at, e)),
                Some(Ok(ps)) if ps.len() == 1 && matches!(ps[0], Piece::Ref(_)) => {
                    let Piece::Ref(r) = &ps[0] else { unreachable!("matched above") };
                    value_of(r).map_err(|e| (at.clone(), e))?
                }
                Some(Ok(ps)) => {
                    let mut text = String::new();
                    for p in ps {
                        match p {
                            Piece::Text(t) => text.push_str(&t),
                            Piece::Ref(r) => match value_of(&r).map_err(|e| (at.clone(), e))? {
                                Value::String(s) => text.push_str(&s),
                                v @ (Value::Number(_) | Value::Bool(_)) => text.push_str(&v.to_string()),
                                other => {
                                    return Err((
                                        at,
                                        format!("{r} gives {}, which cannot be written into a text", kind(&other)),
                                    ));
                                }
                            },
                        }
                    }
                    Value::String(text)
                }
            },
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| go(v, format!("{at}[{i}]"), value_of))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                        go(v, path, value_of).map(|v| (k.clone(), v))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => other.clone(),
        })
    }
    go(data, String::new(), value_of)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The value `reference` names in `parents` (the step outputs by step id, as the engine
/// hands them to a step).
pub fn resolve(reference: &Reference, parents: &Value) -> Result<Value, String> {
    let output = parents
        .get(&reference.step)
        .ok_or_else(|| format!("{reference}: step {:?} gave this step no output", reference.step))?;
    fn at(value: &Value, path: &[Segment], whole: &Reference) -> Result<Value, String> {
        let Some((first, rest)) = path.split_first() else { return Ok(value.clone()) };
        match first {
            Segment::Field(name) => match value.get(name) {
                Some(v) => at(v, rest, whole),
                None => Err(format!("{whole}: the output has no {name:?} there")),
            },
            Segment::Index(i) => match value.as_array().and_then(|a| a.get(*i)) {
                Some(v) => at(v, rest, whole),
                None => Err(format!("{whole}: the output has no item {i} there")),
            },
            Segment::All => match value.as_array() {
                Some(items) => {
                    items.iter().map(|v| at(v, rest, whole)).collect::<Result<Vec<_>, _>>().map(Value::Array)
                }
                None => Err(format!("{whole}: the output has {} where * needs a list", kind(value))),
            },
        }
    }
    at(output, &reference.path, reference)
}

/// `data` with a sample value of each reference's shape in place, for checking and for
/// reading the fixed fields (orgs) of a definition. Untyped references get `any` in turn.
pub fn with_samples(data: &Value, shapes: &dyn Fn(&Reference) -> Option<Shape>, any: &Value) -> Value {
    substitute(data, &mut |r| {
        Ok(match shapes(r) {
            Some(Shape::Any) | None => any.clone(),
            Some(s) => s.sample(),
        })
    })
    .unwrap_or_else(|_| data.clone())
}

/// The values an untyped reference is tried with when a definition is checked.
pub fn any_samples() -> [Value; 4] {
    [Value::String("ref".into()), Value::from(1), Value::Bool(true), Value::Array(vec![Value::String("ref".into())])]
}

/// Whether a data path is (inside) a field that references may not fill.
pub fn is_fixed(field: &str) -> bool {
    let top = field.split(['.', '[']).next().unwrap_or(field);
    FIXED_FIELDS.contains(&top)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn references_parse_and_name_their_mistakes() {
        let found =
            find(&json!({"packages": "${{ steps.build.artifacts.*.name }}", "branch": "r/${{steps.x.json.v}}"}))
                .unwrap();
        assert_eq!(found.len(), 2);
        let branch = found.iter().find(|f| f.field == "branch").unwrap();
        assert!(!branch.whole);
        assert_eq!(branch.reference.to_string(), "steps.x.json.v");
        let packages = found.iter().find(|f| f.field == "packages").unwrap();
        assert!(packages.whole);
        assert_eq!(
            packages.reference.path,
            vec![Segment::Field("artifacts".into()), Segment::All, Segment::Field("name".into())]
        );
        for bad in ["${{ steps.build.artifacts", "${{ inputs.x }}", "${{ steps.build }}", "${{ steps.b.a b }}"] {
            let e = find(&json!({"list": [1, bad]})).unwrap_err();
            assert_eq!(e.0, "list[1]", "{bad}: {e:?}");
        }
    }

    #[test]
    fn shapes_follow_the_step_output() {
        let path = |s: &str| parse_reference(&format!("steps.b.{s}")).unwrap().path;
        assert_eq!(shape_of(Source::Task, &path("artifacts.*.name")), Ok(Shape::List(Box::new(Shape::Text))));
        assert_eq!(shape_of(Source::Task, &path("artifacts.0.sizeBytes")), Ok(Shape::Number));
        assert_eq!(shape_of(Source::Task, &path("json.a.3.b")), Ok(Shape::Any));
        assert_eq!(shape_of(Source::Approval, &path("by")), Ok(Shape::Text));
        let e = shape_of(Source::Task, &path("artifacts.*.colour")).unwrap_err();
        assert!(e.contains("name, version, file, sizeBytes, sha256"), "{e}");
        assert!(shape_of(Source::Task, &path("durationMs.0")).unwrap_err().contains("not a list"));
        assert!(shape_of(Source::Approval, &path("artifacts")).is_err());
    }

    #[test]
    fn values_come_from_the_parents_outputs() {
        let parents = json!({"build": {"artifacts": [{"name": "core", "version": "1.0.0-7"}, {"name": "ui", "version": "2.1.0-7"}],
                                        "json": {"release": "r7"}}});
        let data = json!({"packages": "${{ steps.build.artifacts.*.name }}",
                          "releaseName": "release-${{ steps.build.json.release }}-${{ steps.build.artifacts.1.version }}"});
        let resolved = substitute(&data, &mut |r| resolve(r, &parents)).unwrap();
        assert_eq!(resolved, json!({"packages": ["core", "ui"], "releaseName": "release-r7-2.1.0-7"}));
        let e =
            substitute(&json!({"a": "${{ steps.build.json.missing }}"}), &mut |r| resolve(r, &parents)).unwrap_err();
        assert_eq!(e.0, "a");
        assert!(e.1.contains("no \"missing\""), "{e:?}");
        let e = substitute(&json!({"a": "x-${{ steps.build.artifacts }}"}), &mut |r| resolve(r, &parents)).unwrap_err();
        assert!(e.1.contains("cannot be written into a text"), "{e:?}");
        let e = resolve(&parse_reference("steps.other.json").unwrap(), &parents).unwrap_err();
        assert!(e.contains("gave this step no output"), "{e}");
    }

    #[test]
    fn fixed_fields_are_the_top_level_ones() {
        assert!(is_fixed("registry.tag"));
        assert!(is_fixed("targetOrg"));
        assert!(!is_fixed("packages[0]"));
        assert!(!is_fixed("releaseName"));
    }
}
