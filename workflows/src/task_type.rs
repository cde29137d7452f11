//! The kinds of task users submit, the pool each runs in and what each needs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Worker pools. Long steps never take a standard slot: each pool registers only its own
/// task types' actions with the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// Short steps a developer waits on: quick builds, impact analysis, changelogs, sfp commands.
    Standard,
    /// Builds of many packages, installs, validations, pool preparation.
    LongRunning,
}

impl Pool {
    pub const ALL: [Pool; 2] = [Pool::Standard, Pool::LongRunning];

    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Standard => "standard",
            Pool::LongRunning => "long-running",
        }
    }

    /// The step timeout when a task names none.
    pub fn default_timeout(self) -> Duration {
        match self {
            Pool::Standard => Duration::from_secs(15 * 60),
            Pool::LongRunning => Duration::from_secs(2 * 60 * 60),
        }
    }

    /// The longest step timeout a task may ask for.
    pub fn max_timeout(self) -> Duration {
        match self {
            Pool::Standard => Duration::from_secs(60 * 60),
            Pool::LongRunning => Duration::from_secs(6 * 60 * 60),
        }
    }

    /// The task types whose steps this pool runs.
    pub fn task_types(self) -> impl Iterator<Item = TaskType> {
        TaskType::ALL.into_iter().filter(move |t| t.pool() == self)
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Pool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard" => Ok(Pool::Standard),
            "long-running" | "long_running" => Ok(Pool::LongRunning),
            other => Err(format!("unknown pool {other:?} (standard or long-running)")),
        }
    }
}

/// What a step needs delivered just in time, besides its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Credential {
    /// The DevHub org (`-v`), when the project has packages that need one.
    DevHub,
    /// The org a step deploys to or validates against (`-o`).
    TargetOrg,
    /// A token for the npm registry artifacts are published to or fetched from.
    NpmRegistry,
    /// Access to a private source repository.
    Repository,
}

macro_rules! task_types {
    ($($variant:ident = $name:literal, $pool:ident, [$($cred:ident),*], $doc:literal;)*) => {
        /// A task type: one Hatchet workflow (`sfp-<type>`) with one step.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum TaskType {
            $(#[doc = $doc] #[serde(rename = $name)] $variant,)*
        }

        impl TaskType {
            pub const ALL: [TaskType; [$($name),*].len()] = [$(TaskType::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(TaskType::$variant => $name,)* }
            }

            pub fn pool(self) -> Pool {
                match self { $(TaskType::$variant => Pool::$pool,)* }
            }

            /// Credentials the step may need; which of them it gets depends on its data.
            pub fn credentials(self) -> &'static [Credential] {
                match self { $(TaskType::$variant => &[$(Credential::$cred),*],)* }
            }

            pub fn description(self) -> &'static str {
                match self { $(TaskType::$variant => $doc,)* }
            }
        }

        impl FromStr for TaskType {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(TaskType::$variant),)*
                    other => Err(format!(
                        "unknown task type {other:?}; known types: {}",
                        [$($name),*].join(", ")
                    )),
                }
            }
        }
    };
}

task_types! {
    Build = "build", LongRunning, [DevHub, Repository],
        "Builds the project's packages into sfp artifacts (`sfp build`).";
    Quickbuild = "quickbuild", Standard, [DevHub, Repository],
        "Builds without dependency validation (`sfp quickbuild`).";
    Publish = "publish", LongRunning, [DevHub, Repository, NpmRegistry],
        "Builds, then publishes the artifacts to an npm registry (`sfp publish --npm`).";
    FetchArtifacts = "fetch-artifacts", Standard, [Repository, NpmRegistry],
        "Fetches the artifacts of a release definition from an npm registry (`sfp artifacts fetch`).";
    Install = "install", LongRunning, [TargetOrg, Repository],
        "Builds, then installs the artifacts into an org (`sfp install`).";
    Validate = "validate", LongRunning, [DevHub, TargetOrg, Repository],
        "Validates the changed packages against an org (`sfp validate org`).";
    Impact = "impact", Standard, [Repository],
        "Lists the packages or release configs a branch changes (`sfp impact`).";
    Changelog = "changelog", Standard, [DevHub, Repository],
        "Builds, then writes the release changelog (`sfp changelog generate --nopush`).";
    PoolPrepare = "pool-prepare", LongRunning, [DevHub, Repository, NpmRegistry],
        "Prepares a pool of scratch orgs (`sfp pool prepare`).";
    Sfp = "sfp", Standard, [Repository],
        "An allow-listed sfp command with arguments (`data.args`), for what the list lacks.";
}

impl TaskType {
    /// The Hatchet workflow of this type.
    pub fn workflow_name(self) -> String {
        format!("sfp-{}", self.as_str())
    }

    /// The action its step's workers register: `<workflow>:<step>`.
    pub fn action(self) -> String {
        format!("{}:{}", self.workflow_name(), STEP_NAME)
    }

    /// The task type of a workflow name, if it is one of ours.
    pub fn from_workflow_name(name: &str) -> Option<TaskType> {
        name.strip_prefix("sfp-").and_then(|t| t.parse().ok())
    }

    /// The task type of an action id, if it is one of ours.
    pub fn from_action(action: &str) -> Option<TaskType> {
        let (workflow, step) = action.split_once(':')?;
        (step == STEP_NAME).then(|| TaskType::from_workflow_name(workflow)).flatten()
    }
}

/// The one step of each task workflow.
pub const STEP_NAME: &str = "run";

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_pools_split_the_types() {
        for t in TaskType::ALL {
            assert_eq!(t.as_str().parse::<TaskType>(), Ok(t));
            assert_eq!(TaskType::from_workflow_name(&t.workflow_name()), Some(t));
            assert_eq!(TaskType::from_action(&t.action()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        let standard: Vec<_> = Pool::Standard.task_types().collect();
        let long: Vec<_> = Pool::LongRunning.task_types().collect();
        assert_eq!(standard.len() + long.len(), TaskType::ALL.len());
        assert!(long.contains(&TaskType::Build) && long.contains(&TaskType::Install));
        assert!(standard.contains(&TaskType::Quickbuild) && standard.contains(&TaskType::Sfp));
        assert!("deploy".parse::<TaskType>().unwrap_err().contains("known types: build"));
        assert_eq!(TaskType::from_action("sfp-build:other"), None);
    }
}
