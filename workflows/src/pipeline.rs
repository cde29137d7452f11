//! Release pipelines: a YAML definition of typed steps (the task types) with `needs`,
//! retries and timeouts, checked (unknown step types, cycles, missing parents, bad step data
//! are errors naming the place) and turned into one Hatchet workflow (a DAG) whose steps run
//! on the same workers as tasks.
//!
//! ```yaml
//! name: release
//! description: build, publish and fetch back
//! priority: normal            # critical | normal | batch
//! steps:
//!   - id: build
//!     type: build
//!     data: {repository: "https://github.com/org/repo.git", buildNumber: 7}
//!   - id: publish
//!     type: publish
//!     needs: [build]
//!     retries: 1
//!     timeoutSeconds: 1800
//!     # only what the build step built: a step's data may use the outputs of steps it needs
//!     data: {repository: "...", buildNumber: 7, packages: "${{ steps.build.artifacts.*.name }}",
//!            registry: {url: "http://registry/", scope: org}}
//!   - id: go-live
//!     type: approval          # waits for an owner's approve/reject; holds no worker slot
//!     needs: [publish]
//!     timeoutSeconds: 86400   # then the run fails (default 1 day, at most 7)
//!     data: {message: "Release to production?"}
//! ```
//!
//! References (`${{ steps.<id>.<path> }}`) are described in [`crate::references`]: they are
//! checked when the definition is stored and filled in by the worker when the step starts.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sfp_protocol::pb::v1::{CreateTaskOpts, CreateWorkflowVersionRequest};
use uuid::Uuid;

use crate::data::{SourcePolicy, TaskData};
use crate::definitions::{SCHEDULE_TIMEOUT, execution_timeout};
use crate::references::{self, Shape, Source};
use crate::step::{MAX_RETRIES, StepInput};
use crate::task_type::TaskType;

pub const MAX_STEPS: usize = 50;

/// The step type that waits for a decision instead of running a command.
pub const APPROVAL: &str = "approval";
/// The action approval steps wait on; the control plane serves it (no worker pool does).
pub const APPROVAL_ACTION: &str = "sfp-approval:wait";
pub const APPROVAL_DEFAULT_TIMEOUT: u64 = 86_400;
pub const APPROVAL_MAX_TIMEOUT: u64 = 7 * 86_400;

/// What a step is.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// `data` is checked and normalised; `template` is the data as written when it refers to
    /// earlier steps' outputs (`data` then holds sample values where the references are).
    Task { task_type: TaskType, data: TaskData, template: Option<Value> },
    /// Waits for an owner's decision; `message` is shown to the approvers.
    Approval { message: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApprovalData {
    #[serde(default)]
    message: Option<String>,
}

/// Where a definition is wrong: `steps[1].needs[0]`, `steps[2].data.registry.url`, ...
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PipelineError {
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> PipelineError {
    PipelineError { field: field.into(), message: message.into() }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// What starts a run besides the API: events posted to `/sfp/api/pipelines/events`.
    #[serde(default, skip_serializing_if = "Triggers::is_empty")]
    pub on: Triggers,
    pub steps: Vec<Step>,
}

/// `on: {events: [release.requested]}`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Triggers {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

impl Triggers {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// An event key: 1 to 100 of `a-z 0-9 . _ : -`, starting with a letter or digit.
pub fn is_event_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 100
        && key.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._:-".contains(c))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    pub id: String,
    #[serde(rename = "type")]
    pub step_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    #[serde(default)]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// A checked definition: every step typed, its data normalised, the DAG sound.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub definition: Definition,
    pub kinds: Vec<StepKind>,
}

/// Reads a definition from YAML (JSON is YAML too).
pub fn parse_yaml(text: &str) -> Result<Definition, PipelineError> {
    let value: Value = serde_norway::from_str(text).map_err(|e| error("definition", format!("not valid YAML: {e}")))?;
    from_value(&value)
}

pub fn from_value(value: &Value) -> Result<Definition, PipelineError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let message = message.split(" at line ").next().unwrap_or(&message).to_string();
        error(if path == "." { "definition".into() } else { path }, message)
    })
}

fn plain(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Definition {
    pub fn check(self, sources: SourcePolicy) -> Result<Pipeline, PipelineError> {
        if !plain(&self.name, 64) {
            return Err(error("name", "1 to 64 letters, digits, '-' or '_', starting with a letter or digit"));
        }
        if let Some(p) = &self.priority
            && !["critical", "normal", "batch"].contains(&p.as_str())
        {
            return Err(error("priority", format!("{p:?} is not critical, normal or batch")));
        }
        for (i, key) in self.on.events.iter().enumerate() {
            if !is_event_key(key) {
                return Err(error(format!("on.events[{i}]"), "1 to 100 of a-z, 0-9, '.', '_', ':' or '-'"));
            }
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(error("steps", format!("1 to {MAX_STEPS} steps")));
        }
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            if !plain(&s.id, 64) {
                return Err(error(format!("steps[{i}].id"), "1 to 64 letters, digits, '-' or '_'"));
            }
            if ids.insert(&s.id, i).is_some() {
                return Err(error(format!("steps[{i}].id"), format!("{:?} is used by another step", s.id)));
            }
        }
        let mut kinds = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            for (j, need) in s.needs.iter().enumerate() {
                if need == &s.id {
                    return Err(error(format!("steps[{i}].needs[{j}]"), "a step cannot need itself"));
                }
                if !ids.contains_key(need.as_str()) {
                    return Err(error(format!("steps[{i}].needs[{j}]"), format!("no step {need:?} in this pipeline")));
                }
            }
            if s.step_type == APPROVAL {
                let data = if s.data.is_null() { serde_json::json!({}) } else { s.data.clone() };
                let a: ApprovalData = serde_path_to_error::deserialize(&data).map_err(|e| {
                    let message = e.inner().to_string();
                    error(format!("steps[{i}].data"), message.split(" at line ").next().unwrap_or(&message).to_string())
                })?;
                if a.message.as_ref().is_some_and(|m| m.len() > 1000) {
                    return Err(error(format!("steps[{i}].data.message"), "at most 1000 characters"));
                }
                if let Some(secs) = s.timeout_seconds
                    && (secs == 0 || secs > APPROVAL_MAX_TIMEOUT)
                {
                    return Err(error(
                        format!("steps[{i}].timeoutSeconds"),
                        format!("1 to {APPROVAL_MAX_TIMEOUT} for an approval"),
                    ));
                }
                if s.retries.is_some_and(|r| r > 0) {
                    return Err(error(format!("steps[{i}].retries"), "an approval is decided once"));
                }
                kinds.push(StepKind::Approval { message: a.message });
                continue;
            }
            let known = format!("{e}, {APPROVAL}", e = s.step_type.parse::<TaskType>().err().unwrap_or_default());
            let t: TaskType = s.step_type.parse().map_err(|_: String| error(format!("steps[{i}].type"), known))?;
            let (d, template) = self.step_data(i, t, &ids, sources)?;
            let pool = t.pool();
            if let Some(secs) = s.timeout_seconds
                && (secs == 0 || secs > pool.max_timeout().as_secs())
            {
                return Err(error(
                    format!("steps[{i}].timeoutSeconds"),
                    format!("1 to {} for the {pool} pool", pool.max_timeout().as_secs()),
                ));
            }
            if s.retries.is_some_and(|r| r > MAX_RETRIES) {
                return Err(error(format!("steps[{i}].retries"), format!("at most {MAX_RETRIES}")));
            }
            kinds.push(StepKind::Task { task_type: t, data: d, template });
        }
        if let Some(cycle) = find_cycle(&self.steps) {
            return Err(error("steps", format!("the steps need each other in a cycle: {}", cycle.join(" -> "))));
        }
        Ok(Pipeline { definition: self, kinds })
    }
}

impl Definition {
    /// A task step's data, checked; with references to earlier steps' outputs, checked with
    /// a value of each reference's type in place (see [`crate::references`]).
    fn step_data(
        &self,
        i: usize,
        t: TaskType,
        ids: &HashMap<&str, usize>,
        sources: SourcePolicy,
    ) -> Result<(TaskData, Option<Value>), PipelineError> {
        let s = &self.steps[i];
        let at = |field: &str| {
            format!("steps[{i}].data{}", if field.is_empty() { String::new() } else { format!(".{field}") })
        };
        let data_error = |e: crate::DataError| {
            let rest = e.field.strip_prefix("data").unwrap_or(&e.field);
            error(format!("steps[{i}].data{rest}"), e.message)
        };
        let found = references::find(&s.data).map_err(|(field, message)| error(at(&field), message))?;
        if found.is_empty() {
            return TaskData::parse(t, &s.data, sources).map(|d| (d, None)).map_err(data_error);
        }
        let mut shapes: HashMap<String, Shape> = HashMap::new();
        for f in &found {
            let r = &f.reference;
            if references::is_fixed(&f.field) {
                return Err(error(
                    at(&f.field),
                    format!(
                        "{r}: orgs, repositories, registries and sfp arguments are fixed when the pipeline is \
                         defined and cannot come from a step's output"
                    ),
                ));
            }
            if !s.needs.contains(&r.step) {
                return Err(error(
                    at(&f.field),
                    format!(
                        "{r}: {:?} is not in this step's needs; a step sees the outputs of the steps it needs",
                        r.step
                    ),
                ));
            }
            let source = match ids.get(r.step.as_str()).map(|j| self.steps[*j].step_type.as_str()) {
                Some(APPROVAL) => Source::Approval,
                _ => Source::Task,
            };
            let shape = references::shape_of(source, &r.path).map_err(|m| error(at(&f.field), format!("{r}: {m}")))?;
            if !f.whole && !matches!(shape, Shape::Text | Shape::Number | Shape::Bool | Shape::Any) {
                return Err(error(
                    at(&f.field),
                    format!("{r} gives {}, which cannot be written into a text", shape.describe()),
                ));
            }
            shapes.insert(r.to_string(), shape);
        }
        let shape_of = |r: &references::Reference| shapes.get(&r.to_string()).cloned();
        let mut refused = None;
        for any in references::any_samples() {
            let sample = references::with_samples(&s.data, &shape_of, &any);
            match TaskData::parse(t, &sample, sources) {
                Ok(d) => return Ok((d, Some(s.data.clone()))),
                Err(e) => refused = refused.or(Some(e)),
            }
        }
        let e = refused.expect("at least one sample was tried");
        let field = e.field.strip_prefix("data.").unwrap_or(&e.field).to_string();
        match found.iter().find(|f| f.field == field || field.starts_with(&format!("{}[", f.field))) {
            Some(f) => {
                let shape = shapes.get(&f.reference.to_string()).map(Shape::describe).unwrap_or_default();
                Err(error(at(&field), format!("{} gives {shape}, which does not fit here: {}", f.reference, e.message)))
            }
            None => Err(data_error(e)),
        }
    }
}

/// A cycle through `needs`, as step ids, if there is one.
fn find_cycle(steps: &[Step]) -> Option<Vec<String>> {
    let needs: HashMap<&str, &[String]> = steps.iter().map(|s| (s.id.as_str(), s.needs.as_slice())).collect();
    let mut done: HashSet<&str> = HashSet::new();
    for start in steps {
        let mut path: Vec<&str> = Vec::new();
        if let Some(c) = visit(start.id.as_str(), &needs, &mut done, &mut path) {
            return Some(c);
        }
    }
    None
}

fn visit<'a>(
    id: &'a str,
    needs: &HashMap<&'a str, &'a [String]>,
    done: &mut HashSet<&'a str>,
    path: &mut Vec<&'a str>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|p| *p == id) {
        let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
        cycle.push(id.to_string());
        return Some(cycle);
    }
    if done.contains(id) {
        return None;
    }
    path.push(id);
    for need in needs.get(id).copied().unwrap_or_default() {
        if let Some(c) = visit(need.as_str(), needs, done, path) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(id);
    None
}

impl Pipeline {
    /// The Hatchet workflow of this pipeline: one task per step, `needs` as parents, each on
    /// its task type's action so the pools' workers run it.
    pub fn workflow(&self, workflow_name: &str, version: i64) -> CreateWorkflowVersionRequest {
        let tasks = self
            .definition
            .steps
            .iter()
            .zip(&self.kinds)
            .map(|(s, kind)| match kind {
                StepKind::Task { task_type: t, .. } => CreateTaskOpts {
                    readable_id: s.id.clone(),
                    action: t.action(),
                    timeout: execution_timeout(*t),
                    inputs: "{}".into(),
                    parents: s.needs.clone(),
                    retries: MAX_RETRIES as i32,
                    backoff_factor: Some(2.0),
                    backoff_max_seconds: Some(300),
                    schedule_timeout: Some(SCHEDULE_TIMEOUT.into()),
                    ..Default::default()
                },
                StepKind::Approval { .. } => CreateTaskOpts {
                    readable_id: s.id.clone(),
                    action: APPROVAL_ACTION.into(),
                    timeout: format!("{}s", s.timeout_seconds.unwrap_or(APPROVAL_DEFAULT_TIMEOUT)),
                    inputs: "{}".into(),
                    parents: s.needs.clone(),
                    retries: 0,
                    schedule_timeout: Some(SCHEDULE_TIMEOUT.into()),
                    ..Default::default()
                },
            })
            .collect();
        CreateWorkflowVersionRequest {
            name: workflow_name.to_string(),
            description: self.definition.description.clone().unwrap_or_default(),
            version: version.to_string(),
            tasks,
            default_priority: Some(2),
            ..Default::default()
        }
    }

    /// The run input: each step's own step input, by step id (workers pick theirs by the
    /// task name the engine assigns).
    pub fn run_input(&self, run_id: Uuid) -> Value {
        let steps: BTreeMap<String, Value> = self
            .definition
            .steps
            .iter()
            .zip(&self.kinds)
            .map(|(s, kind)| {
                let value = match kind {
                    StepKind::Task { task_type: t, data, template } => serde_json::to_value(StepInput {
                        task_id: run_id,
                        task_type: *t,
                        // With references the worker fills them in from the parents' outputs.
                        data: template.clone().unwrap_or_else(|| serde_json::to_value(data).unwrap_or_default()),
                        timeout_seconds: s.timeout_seconds.unwrap_or_else(|| t.pool().default_timeout().as_secs()),
                        retries: s.retries.unwrap_or(0),
                    })
                    .unwrap_or_default(),
                    StepKind::Approval { message } => serde_json::json!({
                        "approval": {"pipelineRun": run_id, "message": message,
                                     "timeoutSeconds": s.timeout_seconds.unwrap_or(APPROVAL_DEFAULT_TIMEOUT)}
                    }),
                };
                (s.id.clone(), value)
            })
            .collect();
        serde_json::json!({ "pipeline": self.definition.name, "steps": steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: release
priority: normal
steps:
  - id: build
    type: build
    data: {repository: "https://github.com/o/r.git", buildNumber: 7}
  - id: publish
    type: publish
    needs: [build]
    retries: 1
    data: {repository: "https://github.com/o/r.git", buildNumber: 7, registry: {url: "http://127.0.0.1:4873/", scope: o}}
"#;

    fn check(yaml: &str) -> Result<Pipeline, PipelineError> {
        parse_yaml(yaml)?.check(SourcePolicy::default())
    }

    #[test]
    fn a_good_pipeline_becomes_a_dag_on_the_task_actions() {
        let p = check(GOOD).unwrap();
        let w = p.workflow("pipeline-release", 3);
        assert_eq!(w.version, "3");
        assert_eq!(w.tasks.len(), 2);
        assert_eq!(w.tasks[1].action, "sfp-publish:run");
        assert_eq!(w.tasks[1].parents, vec!["build".to_string()]);
        let input = p.run_input(Uuid::nil());
        assert_eq!(input["steps"]["publish"]["retries"], 1);
        let gated = check(&format!("{GOOD}  - id: gate\n    type: approval\n    needs: [publish]\n    timeoutSeconds: 60\n    data: {{message: go?}}\n")).unwrap();
        let w = gated.workflow("pipeline-release", 1);
        assert_eq!(
            (w.tasks[2].action.as_str(), w.tasks[2].timeout.as_str(), w.tasks[2].retries),
            (APPROVAL_ACTION, "60s", 0)
        );
        assert_eq!(gated.run_input(Uuid::nil())["steps"]["gate"]["approval"]["message"], "go?");
        assert_eq!(input["steps"]["build"]["type"], "build");
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (GOOD.replace("type: publish", "type: deploy"), "steps[1].type"),
            (GOOD.replace("needs: [build]", "needs: [compile]"), "steps[1].needs[0]"),
            (GOOD.replace("needs: [build]", "needs: [publish]"), "steps[1].needs[0]"),
            (GOOD.replace("scope: o", "scope: \"@@\""), "steps[1].data.registry.scope"),
            (GOOD.replace("id: publish", "id: build"), "steps[1].id"),
            (GOOD.replace("retries: 1", "retries: 9"), "steps[1].retries"),
            (GOOD.replace("name: release", "name: \"re lease\""), "name"),
            (GOOD.replace("priority: normal", "colour: red"), "colour"),
            ("steps: [".to_string(), "definition"),
        ];
        for (yaml, field) in cases {
            let e = check(&yaml).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let cyclic = GOOD.replace(
            "    data: {repository: \"https://github.com/o/r.git\", buildNumber: 7}\n",
            "    needs: [publish]\n    data: {repository: \"https://github.com/o/r.git\", buildNumber: 7}\n",
        );
        let e = check(&cyclic).unwrap_err();
        assert!(e.message.contains("cycle: build -> publish -> build"), "{e}");
    }

    #[test]
    fn steps_take_inputs_from_the_outputs_of_steps_they_need() {
        let yaml = GOOD.replace(
            "data: {repository: \"https://github.com/o/r.git\", buildNumber: 7, registry",
            "data: {repository: \"https://github.com/o/r.git\", buildNumber: 7, packages: \"${{ steps.build.artifacts.*.name }}\", \
             branch: \"rel/${{ steps.build.json.version }}\", registry",
        );
        let p = check(&yaml).unwrap();
        let input = p.run_input(Uuid::nil());
        // The worker gets the data as written, and fills the values in from the parents.
        assert_eq!(input["steps"]["publish"]["data"]["packages"], "${{ steps.build.artifacts.*.name }}");
        assert_eq!(input["steps"]["build"]["data"]["branch"], "main", "steps without references are normalised");
        let StepKind::Task { data: TaskData::Publish(d), .. } = &p.kinds[1] else { panic!("{:?}", p.kinds[1]) };
        assert_eq!(d.registry.scope, "o", "fixed fields are read from the definition");

        let with =
            |field: &str| GOOD.replace("buildNumber: 7, registry", &format!("buildNumber: 7, {field}, registry"));
        let cases = [
            (
                with("packages: \"${{ steps.nope.artifacts.*.name }}\""),
                "steps[1].data.packages",
                "not in this step's needs",
            ),
            (
                with("packages: \"${{ steps.build.artifacts.*.colour }}\""),
                "steps[1].data.packages",
                "it has name, version",
            ),
            (
                with("packages: \"${{ steps.build.durationMs }}\""),
                "steps[1].data.packages",
                "gives a number, which does not fit",
            ),
            (
                with("branch: \"x-${{ steps.build.artifacts }}\""),
                "steps[1].data.branch",
                "cannot be written into a text",
            ),
            (with("branch: \"${{ steps.build.outputTail\""), "steps[1].data.branch", "never closed"),
            (
                GOOD.replace("scope: o}", "scope: \"${{ steps.build.json.scope }}\"}"),
                "steps[1].data.registry.scope",
                "fixed when the pipeline is defined",
            ),
            (with("gitTag: \"${{ steps.build.artifacts.0.name }}\""), "steps[1].data.gitTag", "gives a text"),
        ];
        for (yaml, field, message) in cases {
            let e = check(&yaml).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(message), "{e}");
        }
        // Untyped values are accepted wherever one of their possible types fits.
        check(&with("buildNumber2: 1").replace("buildNumber2: 1", "gitTag: \"${{ steps.build.json.tag }}\"")).unwrap();
    }
}
