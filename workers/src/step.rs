//! Runs one step: a private folder, the source, the org logins, the sfp commands with a hard
//! deadline, the results. The folder goes whatever happens.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sfp_workflows::plan::DEVHUB_ALIAS;
use sfp_workflows::{Artifact, OrgLogin, Progress, SourcePolicy, StepInput, StepOutput, StepPlan, TaskData};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::credentials::{ControlPlane, Lease, StepIdentity};
use crate::process::{self, Exit, Spec, Stream};
use crate::progress::{self, Tracker};
use crate::workdir::StepDir;

/// Basic credentials for an npm registry this worker publishes to or fetches from (the
/// instance's own registry, configured on the worker, never part of a step's input).
#[derive(Clone)]
pub struct RegistryLogin {
    /// The registry's base URL, e.g. `http://127.0.0.1:4873/`.
    pub url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("url", &self.url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl RegistryLogin {
    /// The npmrc line that authenticates to this registry: `//host:port/path/:_auth=...`.
    pub fn npmrc_line(&self) -> Option<String> {
        use base64::Engine as _;
        let (_, rest) = self.url.split_once("://")?;
        let rest = if rest.ends_with('/') { rest.to_string() } else { format!("{rest}/") };
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.username, self.password));
        Some(format!("//{rest}:_auth={auth}\nalways-auth=true\n"))
    }

    pub fn serves(&self, url: &str) -> bool {
        let norm = |u: &str| u.trim_end_matches('/').to_string();
        norm(url) == norm(&self.url)
    }
}

/// Where the sfp CLI is and what its processes may see.
#[derive(Debug, Clone)]
pub struct Toolbox {
    /// The `sfp` executable (a node script).
    pub sfp: PathBuf,
    pub git: PathBuf,
    /// `PATH` of the step's processes: node's folder and the system's.
    pub path: String,
    pub work_root: PathBuf,
    pub sources: SourcePolicy,
    pub registries: Vec<RegistryLogin>,
    /// Where credentials for registered orgs come from; steps that need an org fail without.
    pub control_plane: Option<ControlPlane>,
}

/// What a running step tells the outside world.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Log { level: &'static str, message: String },
    Progress(Progress),
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepEnd {
    Completed(StepOutput),
    /// `retryable`: whether trying again could help (a bad input never does).
    Failed {
        message: String,
        retryable: bool,
    },
    Cancelled,
}

const TAIL: usize = 40;
const MAX_JSON_FILE: u64 = 4 * 1024 * 1024;
/// The username of the local stand-in DevHub (see [`OrgLogin::LocalDevHub`]).
const LOCAL_DEVHUB_USER: &str = "local-devhub@sfp-server.invalid";

fn failed(message: impl Into<String>, retryable: bool) -> StepEnd {
    StepEnd::Failed { message: message.into(), retryable }
}

pub async fn execute(
    tools: &Toolbox,
    input: &StepInput,
    step: StepIdentity,
    cancel: &CancellationToken,
    reports: &mpsc::UnboundedSender<Report>,
) -> StepEnd {
    let task_run = step.step_run_id;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(input.timeout_seconds.max(1));
    let data = match TaskData::parse(input.task_type, &input.data, tools.sources) {
        Ok(d) => d,
        Err(e) => return failed(format!("invalid task data: {e}"), false),
    };
    let plan = StepPlan::for_task(&data);
    let dir = match StepDir::create(&tools.work_root, task_run) {
        Ok(d) => d,
        Err(e) => return failed(format!("could not create the step's folder: {e}"), true),
    };
    let mut run =
        Run { tools, dir: &dir, deadline, cancel, reports, tail: VecDeque::new(), stdout: Vec::new(), lease: None };
    let end = run.steps(&plan, input, step, started).await;
    let lease = run.lease.take();
    drop(run);
    drop(dir); // the folder, the clone and every login in it go now
    if let Some(lease) = lease {
        // The server revokes the access tokens the step was given.
        lease.release().await;
    }
    end
}

struct Run<'a> {
    tools: &'a Toolbox,
    dir: &'a StepDir,
    deadline: tokio::time::Instant,
    cancel: &'a CancellationToken,
    reports: &'a mpsc::UnboundedSender<Report>,
    tail: VecDeque<String>,
    stdout: Vec<String>,
    lease: Option<Lease>,
}

impl Run<'_> {
    fn progress(&self, percent: u8, message: impl Into<String>) {
        let _ = self.reports.send(Report::Progress(Progress::new(percent, message)));
    }

    fn log(&self, level: &'static str, message: impl Into<String>) {
        let _ = self.reports.send(Report::Log { level, message: message.into() });
    }

    fn env(&self, plan: &StepPlan) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: &str| {
            env.insert(k.to_string(), v.to_string());
        };
        set("PATH", &self.tools.path);
        set("HOME", &self.dir.home().to_string_lossy());
        set("TMPDIR", &self.dir.tmp().to_string_lossy());
        set("LANG", "C.UTF-8");
        set("CI", "true");
        set("NO_COLOR", "1");
        set("FORCE_COLOR", "0");
        for prefix in ["SF", "SFDX"] {
            set(&format!("{prefix}_DISABLE_TELEMETRY"), "true");
            set(&format!("{prefix}_USE_GENERIC_UNIX_KEYCHAIN"), "true");
            set(&format!("{prefix}_AUTOUPDATE_DISABLE"), "true");
            set(&format!("{prefix}_SKIP_NEW_VERSION_CHECK"), "true");
        }
        set("GIT_TERMINAL_PROMPT", "0");
        set("GIT_CONFIG_NOSYSTEM", "1");
        let protocols = if self.tools.sources.allow_local { "https:http:ssh:git:file" } else { "https:http:ssh:git" };
        set("GIT_ALLOW_PROTOCOL", protocols);
        for who in ["AUTHOR", "COMMITTER"] {
            set(&format!("GIT_{who}_NAME"), "sfp-server worker");
            set(&format!("GIT_{who}_EMAIL"), "worker@sfp-server.invalid");
        }
        if plan.logins.contains(&OrgLogin::LocalDevHub) {
            // The stand-in DevHub must never be contacted: no API version lookup, no DNS check.
            set("SF_ORG_API_VERSION", "60.0");
            set("SFDX_DISABLE_DNS_CHECK", "true");
        }
        env
    }

    async fn steps(&mut self, plan: &StepPlan, input: &StepInput, step: StepIdentity, started: Instant) -> StepEnd {
        self.progress(5, "preparing");
        let env = self.env(plan);
        let work = self.dir.work();
        if let Some((repo, branch)) = &plan.source {
            self.progress(8, format!("cloning {repo} ({branch})"));
            let args = vec![
                "clone".into(),
                "--quiet".into(),
                "--branch".into(),
                branch.clone(),
                "--".into(),
                repo.clone(),
                work.to_string_lossy().into_owned(),
            ];
            let spec =
                Spec { program: self.tools.git.clone(), args, cwd: self.dir.root().to_path_buf(), env: env.clone() };
            match self.command(&spec, None).await {
                Ok(Exit::Code(0)) => {}
                Ok(Exit::Cancelled) => return StepEnd::Cancelled,
                Ok(Exit::TimedOut) => return self.timed_out(input, "cloning the repository"),
                Ok(other) => {
                    return failed(
                        format!("git clone of {repo} ({branch}) failed ({}): {}", describe(&other), self.last_lines(3)),
                        true,
                    );
                }
                Err(e) => return failed(format!("could not run git: {e}"), true),
            }
        } else if let Err(e) = std::fs::create_dir(&work) {
            return failed(format!("could not create the working tree: {e}"), true);
        }
        if let Err(end) = self.logins(plan, &step).await {
            return *end;
        }
        if let Some(registry) = &plan.registry {
            let scope = registry.scope.trim_start_matches('@');
            let mut npmrc = format!("registry={}\n@{scope}:registry={}\n", registry.url, registry.url);
            if let Some(line) =
                self.tools.registries.iter().find(|r| r.serves(&registry.url)).and_then(RegistryLogin::npmrc_line)
            {
                npmrc.push_str(&line);
            }
            if let Err(e) = write_private(&self.dir.root().join("npmrc"), npmrc.as_bytes()) {
                return failed(format!("could not write the registry settings: {e}"), true);
            }
        }
        let packages = std::fs::read(work.join("sfdx-project.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map_or(0, |p| progress::package_count(&p));
        let mut tracker = Tracker::new(plan.commands.len(), packages);
        self.progress(progress::PREPARED, "source ready");
        for (i, args) in plan.commands.iter().enumerate() {
            tracker.start_command(i);
            let verb = args.iter().take_while(|a| !a.starts_with('-')).take(2).cloned().collect::<Vec<_>>().join(" ");
            let verb = if verb.is_empty() { args.first().cloned().unwrap_or_default() } else { verb };
            self.progress(tracker.percent(), format!("sfp {verb}"));
            self.stdout.clear();
            let spec =
                Spec { program: self.tools.sfp.clone(), args: args.clone(), cwd: work.clone(), env: env.clone() };
            match self.command(&spec, Some(&mut tracker)).await {
                Ok(Exit::Code(0)) => {}
                Ok(Exit::Cancelled) => return StepEnd::Cancelled,
                Ok(Exit::TimedOut) => return self.timed_out(input, &format!("sfp {verb}")),
                Ok(other) => {
                    return failed(format!("sfp {verb} failed ({}): {}", describe(&other), self.last_lines(5)), true);
                }
                Err(e) => return failed(format!("could not run sfp ({}): {e}", self.tools.sfp.display()), true),
            }
        }
        self.progress(96, "collecting results");
        let artifacts = match &plan.artifacts_from {
            Some(d) => match collect_artifacts(&work.join(d)) {
                Ok(a) => a,
                Err(e) => return failed(format!("could not read the artifacts: {e}"), true),
            },
            None => Vec::new(),
        };
        let mut files = serde_json::Map::new();
        for name in &plan.files {
            if let Some(v) = read_json(&work.join(name)) {
                files.insert(name.clone(), v);
            }
        }
        let json = if plan.json_output { serde_json::from_str(&self.stdout.join("\n")).ok() } else { None };
        let output = StepOutput {
            commands: plan.commands.clone(),
            duration_ms: started.elapsed().as_millis() as u64,
            artifacts,
            files,
            json,
            output_tail: self.tail.iter().cloned().collect(),
        };
        self.progress(100, "done");
        StepEnd::Completed(output)
    }

    fn timed_out(&self, input: &StepInput, during: &str) -> StepEnd {
        failed(
            format!("the step exceeded its timeout of {} s while {during}; it was killed", input.timeout_seconds),
            true,
        )
    }

    async fn logins(&mut self, plan: &StepPlan, step: &StepIdentity) -> Result<(), Box<StepEnd>> {
        let mut aliases = serde_json::Map::new();
        let home = self.dir.home();
        if plan.logins.contains(&OrgLogin::LocalDevHub) {
            write_local_devhub(&home).map_err(|e| failed(format!("could not prepare sfp: {e}"), true))?;
            aliases.insert(DEVHUB_ALIAS.into(), LOCAL_DEVHUB_USER.into());
        }
        let wanted: Vec<&String> = plan
            .logins
            .iter()
            .filter_map(|l| match l {
                OrgLogin::Registered { org, .. } => Some(org),
                OrgLogin::LocalDevHub => None,
            })
            .collect();
        if !wanted.is_empty() {
            let Some(plane) = &self.tools.control_plane else {
                return Err(Box::new(failed(
                    format!(
                        "org {:?} needs credentials from the control plane, and this worker has no connection to it \
                         (start sfp-worker with --control-plane-url and --control-plane-token-file)",
                        wanted[0]
                    ),
                    false,
                )));
            };
            self.progress(9, "fetching the step's org credentials");
            let (lease, creds) = plane.credentials(step).await.map_err(|e| failed(e, true))?;
            self.lease = Some(lease);
            for org in &creds.orgs {
                write_org_login(&home, org)
                    .map_err(|e| failed(format!("could not log in to {}: {e}", org.username), true))?;
                aliases.insert(org.alias.clone(), org.username.clone().into());
                self.log(
                    "INFO",
                    format!("logged in to {} as {} for this step ({})", org.alias, org.username, org.instance_url),
                );
            }
            if let Some(missing) =
                wanted.iter().find(|w| !creds.orgs.iter().any(|o| o.username.eq_ignore_ascii_case(w)))
            {
                return Err(Box::new(failed(format!("the control plane gave no credentials for {missing:?}"), false)));
            }
        }
        if !aliases.is_empty() {
            let state = home.join(".sfdx");
            std::fs::create_dir_all(&state).map_err(|e| failed(format!("could not prepare sfp: {e}"), true))?;
            let file = serde_json::json!({ "orgs": aliases });
            write_private(&state.join("alias.json"), file.to_string().as_bytes())
                .map_err(|e| failed(format!("could not prepare sfp: {e}"), true))?;
        }
        Ok(())
    }

    /// Runs a process to its end, feeding its lines to the logs, the tail and the tracker.
    async fn command(&mut self, spec: &Spec, mut tracker: Option<&mut Tracker>) -> std::io::Result<Exit> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let name = if spec.program == self.tools.sfp {
            "sfp".to_string()
        } else {
            spec.program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        };
        let reports = self.reports.clone();
        let started = move |pid: u32| {
            let _ = reports.send(Report::Log { level: "INFO", message: format!("started {name} (pid {pid})") });
        };
        let running = process::run(spec, self.deadline, self.cancel, tx, started);
        tokio::pin!(running);
        let mut exit = None;
        loop {
            tokio::select! {
                result = &mut running, if exit.is_none() => exit = Some(result),
                line = rx.recv() => match line {
                    Some((stream, line)) => {
                        if stream == Stream::Stdout {
                            self.stdout.push(line.clone());
                        }
                        if let Some(t) = tracker.as_deref_mut()
                            && t.line(&line)
                        {
                            self.progress(t.percent(), line.trim().to_string());
                        }
                        if !line.trim().is_empty() {
                            if self.tail.len() == TAIL {
                                self.tail.pop_front();
                            }
                            self.tail.push_back(line.clone());
                        }
                        self.log(if stream == Stream::Stderr { "WARN" } else { "INFO" }, line);
                    }
                    None => break,
                },
            }
        }
        match exit {
            Some(result) => result,
            None => running.await,
        }
    }

    fn last_lines(&self, n: usize) -> String {
        let lines: Vec<&str> = self.tail.iter().rev().take(n).map(|s| s.trim()).collect();
        let text = lines.into_iter().rev().collect::<Vec<_>>().join(" | ");
        if text.is_empty() { "no output".into() } else { text.chars().take(2000).collect() }
    }
}

fn describe(exit: &Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exit code {c}"),
        Exit::Signal(s) => format!("killed by signal {s}"),
        Exit::TimedOut => "timed out".into(),
        Exit::Cancelled => "cancelled".into(),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(contents)
}

/// The token-less stand-in DevHub, in the sfdx state files sfp reads.
fn write_local_devhub(home: &Path) -> std::io::Result<()> {
    let state = home.join(".sfdx");
    std::fs::create_dir_all(&state)?;
    let auth = serde_json::json!({
        "username": LOCAL_DEVHUB_USER,
        "instanceUrl": "https://local-devhub.sfp-server.invalid",
        "loginUrl": "https://local-devhub.sfp-server.invalid",
        "orgId": "00D000000000000AAA",
        "isDevHub": true,
    });
    write_private(&state.join(format!("{LOCAL_DEVHUB_USER}.json")), auth.to_string().as_bytes())
}

/// An org session in the sfdx state files of the step's private home: an access token and
/// no refresh token (it stops working when the server revokes it at the step's end).
fn write_org_login(home: &Path, org: &sfp_workflows::credentials::OrgCredential) -> std::io::Result<()> {
    if org.username.contains(['/', '\\']) || org.username.starts_with('.') || org.username.is_empty() {
        return Err(std::io::Error::other("the username cannot name a file"));
    }
    let state = home.join(".sfdx");
    std::fs::create_dir_all(&state)?;
    let auth = serde_json::json!({
        "username": org.username,
        "accessToken": org.access_token,
        "instanceUrl": org.instance_url,
        "loginUrl": org.login_url,
        "orgId": org.org_id,
    });
    let mut bytes = auth.to_string().into_bytes();
    let written = write_private(&state.join(format!("{}.json", org.username)), &bytes);
    bytes.iter_mut().for_each(|b| *b = 0);
    written
}

fn read_json(path: &Path) -> Option<Value> {
    let meta = path.metadata().ok()?;
    if meta.len() > MAX_JSON_FILE {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Artifacts in a folder or its subfolders (one level, as `artifacts fetch` writes them):
/// built `<name>_sfpowerscripts_artifact_<version>.zip` files and fetched npm tarballs
/// `<scope>-<name>_sfpowerscripts_artifact-<version>.tgz`, sorted by name.
pub fn collect_artifacts(dir: &Path) -> std::io::Result<Vec<Artifact>> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path)?.flatten() {
                files.push(inner.path());
            }
        } else {
            files.push(path);
        }
    }
    let mut artifacts = Vec::new();
    for path in files {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let parsed = if let Some(stem) = file.strip_suffix(".zip") {
            stem.rsplit_once("_sfpowerscripts_artifact_").map(|(n, v)| (n.to_string(), v.to_string()))
        } else if let Some(stem) = file.strip_suffix(".tgz") {
            stem.rsplit_once("_sfpowerscripts_artifact-").map(|(n, v)| {
                // npm pack names a scoped package `<scope>-<name>`.
                let name = n.split_once('-').map_or(n, |(_, rest)| rest);
                (name.to_string(), v.to_string())
            })
        } else {
            None
        };
        let Some((name, version)) = parsed else { continue };
        let bytes = std::fs::read(&path)?;
        artifacts.push(Artifact {
            name,
            version,
            file: file.clone(),
            size_bytes: bytes.len() as u64,
            sha256: Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect(),
        });
    }
    artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(artifacts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_read_from_their_file_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seed-data_sfpowerscripts_artifact_1.0.0-7.zip"), b"zz").unwrap();
        std::fs::write(dir.path().join("core_sfpowerscripts_artifact_1.0.0-7.zip"), b"z").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"-").unwrap();
        std::fs::create_dir(dir.path().join("rel-1")).unwrap();
        std::fs::write(dir.path().join("rel-1/sfp-app-ui_sfpowerscripts_artifact-2.1.0-3.tgz"), b"t").unwrap();
        let a = collect_artifacts(dir.path()).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!((a[0].name.as_str(), a[0].version.as_str(), a[0].size_bytes), ("app-ui", "2.1.0-3", 1));
        assert_eq!((a[1].name.as_str(), a[1].version.as_str(), a[1].size_bytes), ("core", "1.0.0-7", 1));
        assert_eq!(a[2].sha256.len(), 64);
        let login = RegistryLogin { url: "http://127.0.0.1:4873".into(), username: "u".into(), password: "p".into() };
        assert_eq!(login.npmrc_line().unwrap(), "//127.0.0.1:4873/:_auth=dTpw\nalways-auth=true\n");
        assert!(login.serves("http://127.0.0.1:4873/"));
        assert!(!format!("{login:?}").contains("\"p\""), "the password never prints");
        assert!(collect_artifacts(&dir.path().join("missing")).unwrap().is_empty());
    }
}
