//! What a step does for its task data: which repository to clone, which orgs the sfp CLI
//! must know, and the sfp commands (argv arrays, never a shell line) to run in order.

use crate::data::{ImpactKind, Registry, TaskData};

/// The alias sfp knows the DevHub by inside a step.
pub const DEVHUB_ALIAS: &str = "devhub";
/// The alias of the org a step installs to or validates against.
pub const TARGET_ALIAS: &str = "target";
/// The folder (inside the working tree) build artifacts are written to.
pub const ARTIFACT_DIR: &str = "artifacts";
/// The `.npmrc` the worker writes for registry steps (outside the working tree).
pub const NPMRC: &str = "../npmrc";

/// An org the sfp CLI must be logged in to for the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgLogin {
    /// A registered org, logged in with credentials delivered for this step only.
    Registered { alias: &'static str, org: String },
    /// sfp's build commands insist on an authenticated `-v` DevHub even for source and data
    /// packages, where they never contact it. A local entry without any token stands in;
    /// a project with unlocked packages then fails in sfp with a clear message.
    LocalDevHub,
}

/// The plan of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    /// `(repository, branch)` to clone into the working tree.
    pub source: Option<(String, String)>,
    pub logins: Vec<OrgLogin>,
    /// The registry an `.npmrc` is written for.
    pub registry: Option<Registry>,
    /// sfp argv arrays (without `sfp` itself), run in order; the first failure ends the step.
    pub commands: Vec<Vec<String>>,
    /// Collect `*.zip` artifacts from this folder of the working tree afterwards.
    pub artifacts_from: Option<String>,
    /// JSON files of the working tree to return.
    pub files: Vec<String>,
    /// Parse the last command's standard output as JSON (`--json`).
    pub json_output: bool,
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn devhub_login(devhub: Option<&str>) -> OrgLogin {
    match devhub {
        Some(org) => OrgLogin::Registered { alias: DEVHUB_ALIAS, org: org.to_string() },
        None => OrgLogin::LocalDevHub,
    }
}

fn build_command(verb: &str, branch: &str, build_number: u32, packages: &[String]) -> Vec<String> {
    let mut cmd = args(&[verb, "-v", DEVHUB_ALIAS, "--branch", branch, "--buildnumber"]);
    cmd.push(build_number.to_string());
    cmd.extend(args(&["--artifactdir", ARTIFACT_DIR]));
    if !packages.is_empty() {
        cmd.push("--buildOnly".into());
        cmd.push(packages.join(","));
    }
    cmd
}

impl StepPlan {
    pub fn for_task(data: &TaskData) -> StepPlan {
        let source = data.source().map(|(r, b)| (r.to_string(), b.to_string()));
        let mut plan = StepPlan {
            source,
            logins: Vec::new(),
            registry: None,
            commands: Vec::new(),
            artifacts_from: None,
            files: Vec::new(),
            json_output: false,
        };
        match data {
            TaskData::Build(d) | TaskData::Quickbuild(d) => {
                let verb = if matches!(data, TaskData::Build(_)) { "build" } else { "quickbuild" };
                plan.logins.push(devhub_login(d.devhub.as_deref()));
                let mut cmd = build_command(verb, &d.branch, d.build_number, &d.packages);
                if d.diffcheck {
                    cmd.push("--diffcheck".into());
                }
                if let Some(c) = &d.config_file {
                    cmd.extend(["--configfilepath".into(), c.clone()]);
                }
                if let Some(r) = &d.release_config {
                    cmd.extend(["--releaseconfig".into(), r.clone()]);
                }
                plan.commands.push(cmd);
                plan.artifacts_from = Some(ARTIFACT_DIR.into());
            }
            TaskData::Publish(d) => {
                plan.logins.push(devhub_login(d.devhub.as_deref()));
                plan.commands.push(build_command("build", &d.branch, d.build_number, &d.packages));
                let scope = d.registry.scope.trim_start_matches('@').to_string();
                let mut publish = args(&["publish", "--artifactdir", ARTIFACT_DIR, "--npm", "--scope"]);
                publish.extend([scope, "--npmrcpath".into(), NPMRC.into()]);
                if let Some(tag) = &d.registry.tag {
                    publish.extend(["--npmtag".into(), tag.clone()]);
                }
                if d.git_tag {
                    publish.push("--gittag".into());
                }
                plan.commands.push(publish);
                plan.registry = Some(d.registry.clone());
                plan.artifacts_from = Some(ARTIFACT_DIR.into());
            }
            TaskData::FetchArtifacts(d) => {
                let scope = d.registry.scope.trim_start_matches('@').to_string();
                for definition in &d.release_definitions {
                    let mut fetch = args(&["artifacts", "fetch", "--artifactdir", "fetched", "--releasedefinition"]);
                    fetch.extend([definition.clone(), "--npm".into(), "--scope".into(), scope.clone()]);
                    fetch.extend(["--npmrcpath".into(), NPMRC.into()]);
                    plan.commands.push(fetch);
                }
                plan.registry = Some(d.registry.clone());
                plan.artifacts_from = Some("fetched".into());
            }
            TaskData::Install(d) => {
                plan.logins.push(devhub_login(d.devhub.as_deref()));
                plan.logins.push(OrgLogin::Registered { alias: TARGET_ALIAS, org: d.target_org.clone() });
                plan.commands.push(build_command("build", &d.branch, d.build_number, &d.packages));
                let mut install = args(&["install", "--targetorg", TARGET_ALIAS, "--artifactdir", ARTIFACT_DIR]);
                if d.skip_if_already_installed {
                    install.push("--skipifalreadyinstalled".into());
                }
                plan.commands.push(install);
                plan.artifacts_from = Some(ARTIFACT_DIR.into());
            }
            TaskData::Validate(d) => {
                plan.logins.push(OrgLogin::Registered { alias: DEVHUB_ALIAS, org: d.devhub.clone() });
                plan.logins.push(OrgLogin::Registered { alias: TARGET_ALIAS, org: d.target_org.clone() });
                let mut cmd = args(&["validate", "org", "--targetorg", TARGET_ALIAS, "-v", DEVHUB_ALIAS, "--mode"]);
                cmd.push(d.mode.as_str().into());
                if let Some(c) = d.coverage_percent {
                    cmd.extend(["--coveragepercent".into(), c.to_string()]);
                }
                if d.diffcheck {
                    cmd.push("--diffcheck".into());
                }
                if let Some(b) = &d.base_ref {
                    cmd.extend(["--ref".into(), d.branch.clone(), "--baseRef".into(), b.clone()]);
                }
                if let Some(r) = &d.release_config {
                    cmd.extend(["--releaseconfig".into(), r.clone()]);
                }
                plan.commands.push(cmd);
            }
            TaskData::Impact(d) => match d.kind {
                ImpactKind::Package => {
                    plan.commands.push(args(&["impact", "package", "--basebranch", &d.base_branch]));
                    plan.files.push("impacted-package.json".into());
                }
                ImpactKind::Releaseconfig => {
                    let mut cmd =
                        args(&["impact", "releaseconfig", "--basebranch", &d.base_branch, "--branch", &d.branch]);
                    if let Some(r) = &d.release_config {
                        cmd.extend(["--releaseconfig".into(), r.clone()]);
                    }
                    plan.commands.push(cmd);
                    plan.files.push("impacted-release-configs.json".into());
                }
            },
            TaskData::Changelog(d) => {
                plan.logins.push(devhub_login(d.devhub.as_deref()));
                plan.commands.push(build_command("quickbuild", &d.branch, d.build_number, &[]));
                plan.commands.push(args(&[
                    "changelog",
                    "generate",
                    "--artifactdir",
                    ARTIFACT_DIR,
                    "--releasename",
                    &d.release_name,
                    "--workitemfilter",
                    &d.work_item_filter,
                    "--branchname",
                    &d.branch,
                    "--nopush",
                ]));
                plan.artifacts_from = Some(ARTIFACT_DIR.into());
            }
            TaskData::PoolPrepare(d) => {
                plan.logins.push(OrgLogin::Registered { alias: DEVHUB_ALIAS, org: d.devhub.clone() });
                plan.commands.push(args(&["pool", "prepare", "-v", DEVHUB_ALIAS, "--poolconfig", &d.pool_config]));
            }
            TaskData::Sfp(d) => {
                plan.json_output = d.args.iter().any(|a| a == "--json");
                plan.commands.push(d.args.clone());
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::data::SourcePolicy;
    use crate::task_type::TaskType;

    fn plan(t: TaskType, v: serde_json::Value) -> StepPlan {
        StepPlan::for_task(&TaskData::parse(t, &v, SourcePolicy { allow_local: true }).unwrap())
    }

    #[test]
    fn a_build_clones_builds_and_collects_artifacts() {
        let p = plan(TaskType::Build, json!({"repository": "file:///r", "buildNumber": 7, "packages": ["a", "b"]}));
        assert_eq!(p.source, Some(("file:///r".into(), "main".into())));
        assert_eq!(p.logins, vec![OrgLogin::LocalDevHub]);
        assert_eq!(
            p.commands,
            vec![args(&[
                "build",
                "-v",
                "devhub",
                "--branch",
                "main",
                "--buildnumber",
                "7",
                "--artifactdir",
                "artifacts",
                "--buildOnly",
                "a,b"
            ])]
        );
        assert_eq!(p.artifacts_from.as_deref(), Some("artifacts"));
    }

    #[test]
    fn an_install_logs_the_target_org_in() {
        let p = plan(TaskType::Install, json!({"repository": "file:///r", "targetOrg": "qa@example.com"}));
        assert!(p.logins.contains(&OrgLogin::Registered { alias: TARGET_ALIAS, org: "qa@example.com".into() }));
        assert_eq!(p.commands.len(), 2);
        assert_eq!(p.commands[1][..3], args(&["install", "--targetorg", "target"])[..]);
    }

    #[test]
    fn the_sfp_type_runs_its_args() {
        let p = plan(TaskType::Sfp, json!({"args": ["artifacts", "query", "-o", "x", "--json"]}));
        assert_eq!(p.source, None);
        assert!(p.json_output);
        assert_eq!(p.commands, vec![args(&["artifacts", "query", "-o", "x", "--json"])]);
    }
}
