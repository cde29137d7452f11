//! Each task type's `data`: a typed schema, checked when the task is submitted so that a
//! mistake is a 400 naming the field, not a failed step minutes later.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::task_type::TaskType;

/// Why a task's data was refused; `field` is a path such as `data.buildNumber`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DataError {
    pub field: String,
    pub message: String,
}

impl DataError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: format!("data.{}", field.into()), message: message.into() }
    }
}

/// Which repositories a deployment lets steps clone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourcePolicy {
    /// `file://` URLs and absolute paths on the worker's machine (tests, single-machine use).
    pub allow_local: bool,
}

fn main_branch() -> String {
    "main".into()
}
fn one() -> u32 {
    1
}
fn pool_config() -> String {
    "config/poolconfig.json".into()
}

/// An npm registry artifacts go to or come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registry {
    pub url: String,
    /// The npm scope, without `@`.
    pub scope: String,
    /// The dist-tag to publish under; the build branch when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildData {
    pub repository: String,
    #[serde(default = "main_branch")]
    pub branch: String,
    #[serde(default = "one")]
    pub build_number: u32,
    /// Only these packages (`--buildOnly`); all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    #[serde(default)]
    pub diffcheck: bool,
    /// A registered DevHub; needed only for unlocked packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devhub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_config: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishData {
    pub repository: String,
    #[serde(default = "main_branch")]
    pub branch: String,
    #[serde(default = "one")]
    pub build_number: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devhub: Option<String>,
    pub registry: Registry,
    /// Tag the commit with each artifact's version (kept in the step's clone).
    #[serde(default)]
    pub git_tag: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FetchArtifactsData {
    pub repository: String,
    #[serde(default = "main_branch")]
    pub branch: String,
    /// Release definition files in the repository.
    pub release_definitions: Vec<String>,
    pub registry: Registry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallData {
    pub repository: String,
    #[serde(default = "main_branch")]
    pub branch: String,
    #[serde(default = "one")]
    pub build_number: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    pub target_org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devhub: Option<String>,
    #[serde(default)]
    pub skip_if_already_installed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValidateMode {
    Individual,
    Fastfeedback,
    Thorough,
    FfReleaseConfig,
    ThoroughReleaseConfig,
}

impl ValidateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ValidateMode::Individual => "individual",
            ValidateMode::Fastfeedback => "fastfeedback",
            ValidateMode::Thorough => "thorough",
            ValidateMode::FfReleaseConfig => "ff-release-config",
            ValidateMode::ThoroughReleaseConfig => "thorough-release-config",
        }
    }
}

fn thorough() -> ValidateMode {
    ValidateMode::Thorough
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValidateData {
    pub repository: String,
    #[serde(default = "main_branch")]
    pub branch: String,
    pub target_org: String,
    pub devhub: String,
    #[serde(default = "thorough")]
    pub mode: ValidateMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_config: Option<String>,
    #[serde(default)]
    pub diffcheck: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImpactKind {
    Package,
    Releaseconfig,
}

fn package_kind() -> ImpactKind {
    ImpactKind::Package
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImpactData {
    pub repository: String,
    #[serde(default = "main_branch")]
    pub branch: String,
    pub base_branch: String,
    #[serde(default = "package_kind")]
    pub kind: ImpactKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_config: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangelogData {
    pub repository: String,
    #[serde(default = "main_branch")]
    pub branch: String,
    #[serde(default = "one")]
    pub build_number: u32,
    pub release_name: String,
    /// A regular expression that finds work items in commit messages.
    pub work_item_filter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devhub: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolPrepareData {
    pub repository: String,
    #[serde(default = "main_branch")]
    pub branch: String,
    pub devhub: String,
    #[serde(default = "pool_config")]
    pub pool_config: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SfpData {
    /// The sfp arguments as an argv array (never through a shell), e.g. `["--version"]`.
    pub args: Vec<String>,
    /// A repository to run the command in; an empty folder when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default = "main_branch")]
    pub branch: String,
}

/// A task's data, checked and typed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TaskData {
    Build(BuildData),
    Quickbuild(BuildData),
    Publish(PublishData),
    FetchArtifacts(FetchArtifactsData),
    Install(InstallData),
    Validate(ValidateData),
    Impact(ImpactData),
    Changelog(ChangelogData),
    PoolPrepare(PoolPrepareData),
    Sfp(SfpData),
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, DataError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // serde says where in the JSON text; the path already says where in the data.
        let message = message.split(" at line ").next().unwrap_or(&message).to_string();
        if path == "." { DataError { field: "data".into(), message } } else { DataError::new(path, message) }
    })
}

impl TaskData {
    /// Reads and checks `data` for a task type.
    pub fn parse(task_type: TaskType, data: &Value, policy: SourcePolicy) -> Result<TaskData, DataError> {
        if !data.is_object() {
            return Err(DataError { field: "data".into(), message: "must be a JSON object".into() });
        }
        let parsed = match task_type {
            TaskType::Build => TaskData::Build(typed(data)?),
            TaskType::Quickbuild => TaskData::Quickbuild(typed(data)?),
            TaskType::Publish => TaskData::Publish(typed(data)?),
            TaskType::FetchArtifacts => TaskData::FetchArtifacts(typed(data)?),
            TaskType::Install => TaskData::Install(typed(data)?),
            TaskType::Validate => TaskData::Validate(typed(data)?),
            TaskType::Impact => TaskData::Impact(typed(data)?),
            TaskType::Changelog => TaskData::Changelog(typed(data)?),
            TaskType::PoolPrepare => TaskData::PoolPrepare(typed(data)?),
            TaskType::Sfp => TaskData::Sfp(typed(data)?),
        };
        parsed.check(policy)?;
        Ok(parsed)
    }

    pub fn task_type(&self) -> TaskType {
        match self {
            TaskData::Build(_) => TaskType::Build,
            TaskData::Quickbuild(_) => TaskType::Quickbuild,
            TaskData::Publish(_) => TaskType::Publish,
            TaskData::FetchArtifacts(_) => TaskType::FetchArtifacts,
            TaskData::Install(_) => TaskType::Install,
            TaskData::Validate(_) => TaskType::Validate,
            TaskData::Impact(_) => TaskType::Impact,
            TaskData::Changelog(_) => TaskType::Changelog,
            TaskData::PoolPrepare(_) => TaskType::PoolPrepare,
            TaskData::Sfp(_) => TaskType::Sfp,
        }
    }

    /// The repository and branch the step works on, if any.
    pub fn source(&self) -> Option<(&str, &str)> {
        let (repo, branch) = match self {
            TaskData::Build(d) | TaskData::Quickbuild(d) => (d.repository.as_str(), d.branch.as_str()),
            TaskData::Publish(d) => (d.repository.as_str(), d.branch.as_str()),
            TaskData::FetchArtifacts(d) => (d.repository.as_str(), d.branch.as_str()),
            TaskData::Install(d) => (d.repository.as_str(), d.branch.as_str()),
            TaskData::Validate(d) => (d.repository.as_str(), d.branch.as_str()),
            TaskData::Impact(d) => (d.repository.as_str(), d.branch.as_str()),
            TaskData::Changelog(d) => (d.repository.as_str(), d.branch.as_str()),
            TaskData::PoolPrepare(d) => (d.repository.as_str(), d.branch.as_str()),
            TaskData::Sfp(d) => (d.repository.as_deref()?, d.branch.as_str()),
        };
        Some((repo, branch))
    }

    fn check(&self, policy: SourcePolicy) -> Result<(), DataError> {
        if let Some((repo, branch)) = self.source() {
            check_repository(repo, policy)?;
            check_ref("branch", branch)?;
        }
        match self {
            TaskData::Build(d) | TaskData::Quickbuild(d) => {
                check_names("packages", &d.packages)?;
                check_org("devhub", d.devhub.as_deref())?;
                check_path("configFile", d.config_file.as_deref())?;
                check_path("releaseConfig", d.release_config.as_deref())?;
            }
            TaskData::Publish(d) => {
                check_names("packages", &d.packages)?;
                check_org("devhub", d.devhub.as_deref())?;
                check_registry(&d.registry)?;
            }
            TaskData::FetchArtifacts(d) => {
                if d.release_definitions.is_empty() {
                    return Err(DataError::new("releaseDefinitions", "names at least one release definition file"));
                }
                for (i, p) in d.release_definitions.iter().enumerate() {
                    check_path(&format!("releaseDefinitions[{i}]"), Some(p))?;
                }
                check_registry(&d.registry)?;
            }
            TaskData::Install(d) => {
                check_names("packages", &d.packages)?;
                check_org("targetOrg", Some(&d.target_org))?;
                check_org("devhub", d.devhub.as_deref())?;
            }
            TaskData::Validate(d) => {
                check_org("targetOrg", Some(&d.target_org))?;
                check_org("devhub", Some(&d.devhub))?;
                if let Some(c) = d.coverage_percent
                    && c > 100
                {
                    return Err(DataError::new("coveragePercent", "is a percentage, 0 to 100"));
                }
                if let Some(r) = &d.base_ref {
                    check_ref("baseRef", r)?;
                }
                check_path("releaseConfig", d.release_config.as_deref())?;
            }
            TaskData::Impact(d) => {
                check_ref("baseBranch", &d.base_branch)?;
                check_path("releaseConfig", d.release_config.as_deref())?;
                if d.kind == ImpactKind::Releaseconfig && d.release_config.is_none() {
                    return Err(DataError::new("releaseConfig", "is required when kind is releaseconfig"));
                }
            }
            TaskData::Changelog(d) => {
                check_org("devhub", d.devhub.as_deref())?;
                check_text("releaseName", &d.release_name, 100)?;
                check_text("workItemFilter", &d.work_item_filter, 200)?;
            }
            TaskData::PoolPrepare(d) => {
                check_org("devhub", Some(&d.devhub))?;
                check_path("poolConfig", Some(&d.pool_config))?;
            }
            TaskData::Sfp(d) => crate::allow_list::check(&d.args).map_err(|m| DataError::new("args", m))?,
        }
        Ok(())
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), DataError> {
    if value.trim().is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(DataError::new(field, format!("must be 1 to {max} characters without control characters")));
    }
    Ok(())
}

fn check_repository(repo: &str, policy: SourcePolicy) -> Result<(), DataError> {
    let field = "repository";
    if repo.is_empty() || repo.len() > 500 || repo.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(DataError::new(field, "must be a git URL of at most 500 characters without spaces"));
    }
    if repo.starts_with('-') {
        return Err(DataError::new(field, "must not start with '-'"));
    }
    let local = repo.starts_with("file://") || repo.starts_with('/');
    let remote = repo.starts_with("https://")
        || repo.starts_with("http://")
        || repo.starts_with("ssh://")
        || (repo.contains('@') && repo.contains(':') && !repo.contains("://"));
    if local && !policy.allow_local {
        return Err(DataError::new(
            field,
            "local repositories are not allowed on this server; use an https or ssh URL",
        ));
    }
    if !local && !remote {
        return Err(DataError::new(field, "must be an https://, ssh:// or git@host:path URL"));
    }
    if repo.contains("://")
        && repo.split_once("://").is_some_and(|(_, rest)| {
            rest.split('/').next().unwrap_or("").contains('@') && rest.split('/').next().unwrap_or("").contains(':')
        })
    {
        return Err(DataError::new(
            field,
            "must not carry credentials; register an integration for private repositories",
        ));
    }
    Ok(())
}

/// A git ref: what `git check-ref-format` accepts, and never an option.
fn check_ref(field: &str, value: &str) -> Result<(), DataError> {
    let bad = value.is_empty()
        || value.len() > 200
        || value.starts_with('-')
        || value.starts_with('/')
        || value.ends_with('/')
        || value.ends_with(".lock")
        || value.contains("..")
        || value.contains("@{")
        || value.contains("//")
        || value.chars().any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return Err(DataError::new(field, format!("{value:?} is not a valid git branch or ref")));
    }
    Ok(())
}

/// A path inside the repository: relative, no `..`.
fn check_path(field: &str, value: Option<&str>) -> Result<(), DataError> {
    let Some(value) = value else { return Ok(()) };
    let bad = value.is_empty()
        || value.len() > 300
        || value.starts_with('/')
        || value.starts_with('-')
        || value.split('/').any(|part| part == "..")
        || value.chars().any(|c| c.is_control());
    if bad {
        return Err(DataError::new(field, "must be a relative path inside the repository"));
    }
    Ok(())
}

fn is_plain_name(value: &str, extra: &str) -> bool {
    !value.is_empty()
        && value.len() <= 100
        && !value.starts_with('-')
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || extra.contains(c))
}

fn check_names(field: &str, values: &[String]) -> Result<(), DataError> {
    for (i, v) in values.iter().enumerate() {
        if !is_plain_name(v, "") {
            return Err(DataError::new(format!("{field}[{i}]"), format!("{v:?} is not a package name")));
        }
    }
    Ok(())
}

/// A registered org: its alias or username.
fn check_org(field: &str, value: Option<&str>) -> Result<(), DataError> {
    match value {
        Some(v) if !is_plain_name(v, "@+") => {
            Err(DataError::new(field, format!("{v:?} is not an org alias or username")))
        }
        _ => Ok(()),
    }
}

fn check_registry(registry: &Registry) -> Result<(), DataError> {
    if !(registry.url.starts_with("https://") || registry.url.starts_with("http://"))
        || registry.url.chars().any(|c| c.is_control() || c.is_whitespace())
        || registry.url.contains('@')
    {
        return Err(DataError::new("registry.url", "must be an http(s) URL without credentials"));
    }
    let scope = registry.scope.trim_start_matches('@');
    if !is_plain_name(scope, "") {
        return Err(DataError::new("registry.scope", "must be an npm scope such as myorg"));
    }
    if let Some(tag) = &registry.tag
        && !is_plain_name(tag, "")
    {
        return Err(DataError::new("registry.tag", "must be a plain dist-tag name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(t: TaskType, v: Value) -> Result<TaskData, DataError> {
        TaskData::parse(t, &v, SourcePolicy { allow_local: false })
    }

    #[test]
    fn defaults_fill_in_and_errors_name_the_field() {
        let TaskData::Build(b) = parse(TaskType::Build, json!({"repository": "https://github.com/o/r.git"})).unwrap()
        else {
            panic!()
        };
        assert_eq!((b.branch.as_str(), b.build_number), ("main", 1));

        let e = parse(TaskType::Build, json!({"repository": "https://x/r", "buildNumber": "7"})).unwrap_err();
        assert_eq!(e.field, "data.buildNumber");
        assert!(e.message.contains("invalid type"), "{e}");

        let e = parse(TaskType::Build, json!({})).unwrap_err();
        assert_eq!(e.field, "data");
        assert!(e.message.contains("missing field `repository`"), "{e}");

        let e = parse(TaskType::Build, json!({"repository": "https://x/r", "colour": 1})).unwrap_err();
        assert!(e.message.contains("unknown field `colour`"), "{e}");

        let e = parse(
            TaskType::Publish,
            json!({"repository": "https://x/r", "registry": {"url": "ftp://x", "scope": "s"}}),
        )
        .unwrap_err();
        assert_eq!(e.field, "data.registry.url");

        let e = parse(TaskType::Build, json!({"repository": "https://x/r", "packages": ["ok", "--evil"]})).unwrap_err();
        assert_eq!(e.field, "data.packages[1]");

        let e = parse(TaskType::Build, json!({"repository": "https://x/r", "branch": "-x"})).unwrap_err();
        assert_eq!(e.field, "data.branch");

        let e = parse(TaskType::Validate, json!({"repository": "https://x/r", "targetOrg": "qa"})).unwrap_err();
        assert!(e.message.contains("missing field `devhub`"), "{e}");
        assert!(parse(TaskType::Build, json!([])).is_err());
    }

    #[test]
    fn repositories_are_urls_and_local_ones_need_permission() {
        for bad in ["", "-upload-pack=x", "not a url", "ftp://host/r", "https://user:pw@github.com/o/r"] {
            assert!(parse(TaskType::Build, json!({"repository": bad})).is_err(), "{bad}");
        }
        for good in ["https://github.com/o/r.git", "git@github.com:o/r.git", "ssh://git@host/o/r"] {
            assert!(parse(TaskType::Build, json!({"repository": good})).is_ok(), "{good}");
        }
        let e = parse(TaskType::Build, json!({"repository": "file:///srv/r"})).unwrap_err();
        assert!(e.message.contains("not allowed"));
        let allowed = TaskData::parse(
            TaskType::Build,
            &json!({"repository": "file:///srv/r"}),
            SourcePolicy { allow_local: true },
        );
        assert!(allowed.is_ok());
    }

    #[test]
    fn the_sfp_type_takes_only_allow_listed_commands() {
        assert!(parse(TaskType::Sfp, json!({"args": ["--version"]})).is_ok());
        let e = parse(TaskType::Sfp, json!({"args": ["plugins", "install", "evil"]})).unwrap_err();
        assert_eq!(e.field, "data.args");
        assert!(parse(TaskType::Sfp, json!({"args": "--version"})).is_err());
    }
}
