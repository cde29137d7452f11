//! Artifacts in the instance's own npm registry: the embedded stack runs the real Verdaccio
//! 6.8.0; a `publish` task builds and publishes with the real sfp CLI, `npm view` finds the
//! versions there, and a `fetch-artifacts` task brings them back byte for byte.

use std::time::Duration;

use serde_json::{Value, json};
use sfp_tests::sdk::{FreshDatabase, tool_from_env, workspace_binary};
use sfp_tests::tasks::{TasksApi, commit_file, entries, sfdx_project};
use sfp_tests::{RunningStack, data_dir, processes_mentioning};
use sha2::Digest as _;

const LIMIT: Duration = Duration::from_secs(180);

/// A stack with the embedded Verdaccio, and a project whose repository has a release
/// definition for build number `build`.
struct World {
    _db: FreshDatabase,
    dir: tempfile::TempDir,
    _repos: tempfile::TempDir,
    stack: RunningStack,
    api: TasksApi,
    registry: String,
    user: String,
    password: String,
    repository: String,
}

async fn world(build: u32) -> World {
    let db = FreshDatabase::create();
    let dir = data_dir();
    let config = format!(
        "database_url = \"{}\"\n[tasks]\nallow_local_repositories = true\n\
         [workers]\nsfp_bin = \"{}\"\n[registry]\nverdaccio_bin = \"{}\"\n",
        db.url,
        tool_from_env("SFP_TEST_SFP_BIN").display(),
        tool_from_env("SFP_TEST_VERDACCIO_BIN").display()
    );
    std::fs::write(dir.path().join("sfp.toml"), config).unwrap();
    let repos = tempfile::tempdir().unwrap();
    let project = repos.path().join("project");
    sfdx_project(&project, 1, true);
    let release = format!("release: rel-1\nartifacts:\n  core: 1.0.0-{build}\n  seed-data: 1.0.0-{build}\n");
    commit_file(&project, "releases/rel-1.yml", &release);
    let stack = RunningStack::start(&workspace_binary("sfp-server"), dir.path(), &[]);
    let registry = stack
        .stdout
        .iter()
        .find_map(|l| {
            l.strip_prefix("registry: ").and_then(|r| r.split_whitespace().next()).filter(|u| u.starts_with("http"))
        })
        .unwrap_or_else(|| panic!("the stack runs a registry: {:?}", stack.stdout))
        .to_string();
    let login: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("registry-credentials.json")).unwrap()).unwrap();
    let (user, password) =
        (login["username"].as_str().unwrap().to_string(), login["password"].as_str().unwrap().to_string());
    let api = TasksApi::sign_in(&stack.url, dir.path()).await;
    let repository = format!("file://{}", project.display());
    World { _db: db, dir, _repos: repos, stack, api, registry, user, password, repository }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_fetch_through_the_embedded_verdaccio() {
    let World { _db, dir, _repos, stack, api, registry, user, password, repository } = world(7).await;
    let (user, password) = (user.as_str(), password.as_str());
    let http = reqwest::Client::new();
    let anonymous = http.get(format!("{registry}@sfp%2fcore_sfpowerscripts_artifact")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "the registry needs a login");

    let target = json!({"url": registry, "scope": "sfp"});
    let publish = api
        .submit_ok(json!({"type": "publish", "data": {"repository": repository, "buildNumber": 7, "registry": target}}))
        .await;
    let done = api.wait_for(&publish, &["completed", "failed"], LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}\n{:?}", api.log_lines(&publish).await);

    // npm itself finds what sfp published.
    let npmrc = dir.path().join("test-npmrc");
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let host = registry.split_once("://").unwrap().1;
    std::fs::write(&npmrc, format!("registry={registry}\n//{host}:_auth={auth}\n")).unwrap();
    let view = std::process::Command::new("npm")
        .args(["view", "@sfp/core_sfpowerscripts_artifact", "versions", "dist-tags", "--json", "--registry", &registry])
        .arg("--userconfig")
        .arg(&npmrc)
        .current_dir(dir.path())
        .output()
        .expect("npm");
    let viewed = String::from_utf8_lossy(&view.stdout).to_string();
    assert!(view.status.success(), "npm view: {viewed}{}", String::from_utf8_lossy(&view.stderr));
    assert!(viewed.contains("1.0.0-7") && viewed.contains("\"main\""), "{viewed}");

    let fetch = api
        .submit_ok(json!({"type": "fetch-artifacts", "data": {
            "repository": repository, "releaseDefinitions": ["releases/rel-1.yml"], "registry": target}}))
        .await;
    let done = api.wait_for(&fetch, &["completed", "failed"], LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}\n{:?}", api.log_lines(&fetch).await);
    let (_, result) = api.get(&format!("/tasks/{fetch}/result")).await;
    let fetched = result["result"]["artifacts"].as_array().expect("fetched artifacts").clone();
    let names: Vec<&str> = fetched.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["core", "seed-data"], "{result}");
    for artifact in &fetched {
        let name = artifact["name"].as_str().unwrap();
        let meta: Value = http
            .get(format!("{registry}@sfp%2f{name}_sfpowerscripts_artifact"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let tarball = meta["versions"]["1.0.0-7"]["dist"]["tarball"].as_str().unwrap().to_string();
        let bytes = http.get(tarball).basic_auth(user, Some(password)).send().await.unwrap().bytes().await.unwrap();
        let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(artifact["sha256"], digest, "{name} came back byte for byte");
    }
    assert_eq!(entries(&dir.path().join("work")), Vec::<String>::new());

    let output = stack.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(output.status.success(), "{:?}", output.stdout);
    assert!(
        processes_mentioning(&dir.path().join("registry")).is_empty(),
        "Verdaccio stopped with the stack: {:?}",
        processes_mentioning(&dir.path().join("registry"))
    );
}

/// Polls a pipeline run until it ends; returns its last status body.
async fn wait_run(api: &TasksApi, run: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let (status, body) = api.get(&format!("/pipelines/runs/{run}")).await;
        assert_eq!(status, 200, "{body}");
        if ["completed", "failed", "cancelled"].contains(&body["status"].as_str().unwrap_or("")) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "the run never ended: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_pipeline_builds_publishes_and_fetches_back() {
    let World { _db, dir, _repos, stack, api, registry, user, password, repository } = world(4).await;
    let yaml = format!(
        "name: release\npriority: critical\nsteps:\n\
         \x20 - id: build\n    type: build\n    data: {{repository: \"{repository}\", buildNumber: 4}}\n\
         \x20 - id: publish\n    type: publish\n    needs: [build]\n    retries: 1\n\
         \x20   data: {{repository: \"{repository}\", buildNumber: 4, packages: \"${{{{ steps.build.artifacts.*.name }}}}\", \
         registry: {{url: \"{registry}\", scope: sfp}}}}\n\
         \x20 - id: fetch\n    type: fetch-artifacts\n    needs: [publish]\n\
         \x20   data: {{repository: \"{repository}\", releaseDefinitions: [releases/rel-1.yml], registry: {{url: \"{registry}\", scope: sfp}}}}\n"
    );

    // Wrong definitions are refused with the place named.
    for (bad, needle) in [
        (yaml.replace("type: publish", "type: deploy"), "steps[1].type: unknown task type \"deploy\""),
        (yaml.replace("needs: [publish]", "needs: [publsh]"), "steps[2].needs[0]: no step \"publsh\""),
        (
            yaml.replacen("    type: build\n", "    type: build\n    needs: [fetch]\n", 1),
            "cycle: build -> fetch -> publish -> build",
        ),
        (yaml.replace("buildNumber: 4}\n", "buildNumber: four}\n"), "steps[0].data.buildNumber"),
        (
            yaml.replace("releaseDefinitions: [", "releaseDefinitions: [\"${{ steps.build.artifacts.0.file }}\", "),
            "steps[2].data.releaseDefinitions[0]: steps.build.artifacts.0.file: \"build\" is not in this step's needs",
        ),
        (
            yaml.replacen("scope: sfp}", "scope: \"${{ steps.build.json.scope }}\"}", 1),
            "steps[1].data.registry.scope: steps.build.json.scope: orgs, repositories, registries",
        ),
    ] {
        let (status, answer) = api.post("/pipelines", json!({"yaml": bad})).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["code"], "invalid_pipeline");
        assert!(answer["message"].as_str().unwrap().contains(needle), "{needle}: {answer}");
    }

    let (status, defined) = api.post("/pipelines", json!({"yaml": yaml})).await;
    assert_eq!(status, 201, "{defined}");
    assert_eq!(defined["version"], 1);
    let (status, again) = api.post("/pipelines", json!({"yaml": yaml.replace("retries: 1", "retries: 2")})).await;
    assert_eq!((status, again["version"].as_i64()), (201, Some(2)), "a new definition is a new version: {again}");
    let (_, first) = api.get("/pipelines/release?version=1").await;
    assert!(first["source"].as_str().unwrap().contains("retries: 1"), "every version is kept: {first}");

    let (status, started) = api.post("/pipelines/release/runs", json!({})).await;
    assert_eq!(status, 201, "{started}");
    let run = started["runId"].as_str().unwrap().to_string();
    let done = wait_run(&api, &run).await;
    assert_eq!(done["status"], "completed", "{done}");
    for step in ["build", "publish", "fetch"] {
        assert_eq!(done["steps"][step]["status"], "completed", "{done}");
    }
    let built: Vec<&str> = done["steps"]["build"]["output"]["artifacts"]
        .as_array()
        .expect("build artifacts")
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(built.len(), 2, "{done}");
    // The publish step built exactly what the build step did: its data took the names from
    // the build's output.
    let rebuild = done["steps"]["publish"]["output"]["commands"][0].as_array().expect("publish commands");
    let only = rebuild.iter().position(|a| a == "--buildOnly").expect("--buildOnly");
    assert_eq!(rebuild[only + 1], built.join(","), "{done}");

    // The artifact is in the registry, and the fetch step got exactly its bytes.
    let http = reqwest::Client::new();
    let meta: Value = http
        .get(format!("{registry}@sfp%2fcore_sfpowerscripts_artifact"))
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tarball =
        meta["versions"]["1.0.0-4"]["dist"]["tarball"].as_str().expect("version 1.0.0-4 is published").to_string();
    let bytes = http.get(tarball).basic_auth(&user, Some(&password)).send().await.unwrap().bytes().await.unwrap();
    let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let fetched = done["steps"]["fetch"]["output"]["artifacts"].as_array().expect("fetched artifacts").clone();
    let core = fetched.iter().find(|a| a["name"] == "core").expect("core fetched");
    assert_eq!(core["sha256"], digest);
    assert_eq!(entries(&dir.path().join("work")), Vec::<String>::new());
    drop(stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_example_runs_the_release_pipeline_on_a_sample_project() {
    // Without a running stack it says so and starts nothing.
    let empty = data_dir();
    let out = std::process::Command::new(workspace_binary("sfp-server"))
        .args(["example", "--data-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no sfp-server is running on"), "{said}");
    assert!(!empty.path().join("examples").exists(), "nothing was made");
    let World { _db, dir, _repos, stack, api: _api, registry: _, user: _, password: _, repository: _ } = world(1).await;
    for build in ["1", "2"] {
        let out = std::process::Command::new(workspace_binary("sfp-server"))
            .args(["example", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "the example failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("(build {build})")), "{text}");
        assert!(text.contains(&format!("completed (core 1.0.0-{build}, seed-data 1.0.0-{build})")), "{text}");
        assert!(text.contains(&format!("release {build} is in the registry")), "{text}");
    }
    assert!(dir.path().join("examples/sample-project/releases/release-2.yml").is_file());
    drop(stack);
}
