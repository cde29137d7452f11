//! `sfp-server example`: the built-in `release` pipeline on a sample sfdx project, for a new
//! user to watch the stack work: a git repository with a source package and a data package
//! is made in the data folder, and the pipeline builds it, publishes the artifacts to the
//! instance's registry and fetches them back for a release, step by step on the screen.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::config::Config;
use crate::stack::DataDir;

const CLASS_META: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<ApexClass xmlns=\"http://soap.sforce.com/2006/04/metadata\"><apiVersion>60.0</apiVersion><status>Active</status></ApexClass>\n";

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .args(["-c", "user.email=example@sfp-server.invalid", "-c", "user.name=sfp-server example"])
        .args(args)
        .current_dir(dir)
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn write(dir: &Path, path: &str, contents: &str) -> anyhow::Result<()> {
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().expect("a parent folder"))?;
    std::fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))
}

/// The sample project: `core` (Apex classes) and `seed-data` (an sfdmu data package).
fn create_project(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    for class in ["AccountService", "AccountServiceTest"] {
        write(
            dir,
            &format!("src/core/main/default/classes/{class}.cls"),
            &format!("public with sharing class {class} {{ }}\n"),
        )?;
        write(dir, &format!("src/core/main/default/classes/{class}.cls-meta.xml"), CLASS_META)?;
    }
    write(
        dir,
        "data/seed/export.json",
        r#"{"objects":[{"query":"SELECT Id, Name FROM Account","operation":"Upsert","externalId":"Name"}]}"#,
    )?;
    write(dir, "data/seed/Account.csv", "Id,Name\n,Acme\n")?;
    let project = json!({
        "packageDirectories": [
            {"path": "src/core", "package": "core", "versionNumber": "1.0.0.NEXT", "default": true},
            {"path": "data/seed", "package": "seed-data", "type": "data", "versionNumber": "1.0.0.NEXT"},
        ],
        "namespace": "",
        "sourceApiVersion": "60.0",
    });
    write(dir, "sfdx-project.json", &serde_json::to_string_pretty(&project)?)?;
    write(dir, "config/project-scratch-def.json", r#"{"orgName":"sample","edition":"Developer"}"#)?;
    write(dir, ".forceignore", "**/jsconfig.json\n")?;
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", "the sample project"])
}

/// The pipeline: build, publish to the registry, fetch the release back.
pub fn release_pipeline(repository: &str, registry: &str, build: u32) -> String {
    format!(
        "name: release\n\
         description: Builds the sample project, publishes its artifacts and fetches the release back\n\
         steps:\n\
         \x20 - id: build\n    type: build\n    data: {{repository: \"{repository}\", buildNumber: {build}}}\n\
         \x20 - id: publish\n    type: publish\n    needs: [build]\n    retries: 1\n\
         \x20   data: {{repository: \"{repository}\", buildNumber: {build}, packages: \"${{{{ steps.build.artifacts.*.name }}}}\", \
         registry: {{url: \"{registry}\", scope: sample}}}}\n\
         \x20 - id: fetch\n    type: fetch-artifacts\n    needs: [publish]\n\
         \x20   data: {{repository: \"{repository}\", releaseDefinitions: [releases/release-{build}.yml], \
         registry: {{url: \"{registry}\", scope: sample}}}}\n"
    )
}

fn summary(step: &Value) -> String {
    let status = step["status"].as_str().unwrap_or("?");
    let artifacts = step["output"]["artifacts"].as_array().map(|a| {
        a.iter()
            .map(|x| format!("{} {}", x["name"].as_str().unwrap_or("?"), x["version"].as_str().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(", ")
    });
    match (status, artifacts, step["error"].as_str()) {
        (_, _, Some(e)) => format!("{status}: {e}"),
        ("completed", Some(a), _) if !a.is_empty() => format!("completed ({a})"),
        _ => status.to_string(),
    }
}

/// Runs the example against the stack running on the data folder; returns the exit code.
pub async fn run(config: &Config) -> anyhow::Result<i32> {
    let data = DataDir::existing(&config.data_dir)?;
    let runtime = data.read_runtime().filter(|_| data.running_pid().is_some()).with_context(|| {
        format!("no sfp-server is running on {}; start it first (scripts/start)", data.root().display())
    })?;
    let admin: Value = serde_json::from_slice(&std::fs::read(data.path(crate::stack::ADMIN_CREDENTIALS_FILE))?)?;
    let registry: Value = serde_json::from_slice(
        &std::fs::read(data.path("registry-credentials.json"))
            .context("the example publishes to the embedded registry, which is not running (is Verdaccio installed? scripts/setup installs it)")?,
    )?;
    let registry_url = registry["url"].as_str().context("the registry login names no url")?.to_string();
    let http = reqwest::Client::new();
    let api = format!("{}/sfp/api", runtime.api_url);
    let login: Value = http
        .post(format!("{api}/auth/admin/login"))
        .json(&json!({"email": admin["email"], "password": admin["password"]}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["access_token"].as_str().context("the administrator could not sign in")?.to_string();

    let project = data.path("examples/sample-project");
    if !project.join(".git").exists() {
        create_project(&project)?;
        println!("sample project: {} (a source package and a data package)", project.display());
    }
    // Every run publishes new versions: the registry keeps what it has.
    let counter = data.path("examples/build-number");
    let build: u32 = std::fs::read_to_string(&counter).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0) + 1;
    std::fs::write(&counter, build.to_string())?;
    write(
        &project,
        &format!("releases/release-{build}.yml"),
        &format!("release: release-{build}\nartifacts:\n  core: 1.0.0-{build}\n  seed-data: 1.0.0-{build}\n"),
    )?;
    git(&project, &["add", "-A"])?;
    git(&project, &["commit", "-q", "-m", &format!("release {build}")])?;

    let repository = format!("file://{}", project.display());
    let yaml = release_pipeline(&repository, &registry_url, build);
    let defined = http.post(format!("{api}/pipelines")).bearer_auth(&token).json(&json!({"yaml": yaml})).send().await?;
    if !defined.status().is_success() {
        let body: Value = defined.json().await.unwrap_or_default();
        let message = body["message"].as_str().unwrap_or("?");
        if message.contains("local") || message.contains("file://") {
            bail!(
                "{message}\nthe example builds a repository on this machine: start the stack with scripts/start \
                   (or set tasks.allow_local_repositories = true)"
            );
        }
        bail!("the pipeline was refused: {message}");
    }
    let started: Value = http
        .post(format!("{api}/pipelines/release/runs"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    let run = started["runId"].as_str().with_context(|| format!("the run did not start: {started}"))?.to_string();
    println!("pipeline release, run {run} (build {build}): build -> publish -> fetch");
    let mut shown = std::collections::BTreeMap::new();
    loop {
        let body: Value =
            http.get(format!("{api}/pipelines/runs/{run}")).bearer_auth(&token).send().await?.json().await?;
        for id in ["build", "publish", "fetch"] {
            let line = summary(&body["steps"][id]);
            if shown.get(id) != Some(&line) {
                println!("  {id:<8} {line}");
                shown.insert(id, line);
            }
        }
        match body["status"].as_str() {
            Some("completed") => {
                println!("release {build} is in the registry {registry_url} (scope @sample) and was fetched back");
                return Ok(0);
            }
            Some("failed") | Some("cancelled") => {
                println!(
                    "the run ended {}; replay it from the failed step with POST {api}/pipelines/runs/{run}/replay",
                    body["status"]
                );
                return Ok(1);
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use sfp_workflows::pipeline::{StepKind, parse_yaml};

    #[test]
    fn the_release_pipeline_is_valid_and_publishes_what_was_built() {
        let yaml = super::release_pipeline("https://example.com/sample.git", "http://127.0.0.1:4873/", 3);
        let pipeline = parse_yaml(&yaml).unwrap().check(sfp_workflows::SourcePolicy::default()).unwrap();
        let StepKind::Task { template: Some(template), .. } = &pipeline.kinds[1] else {
            panic!("the publish step takes its packages from the build: {:?}", pipeline.kinds[1])
        };
        assert_eq!(template["packages"], "${{ steps.build.artifacts.*.name }}");
    }
}
