//! Turns what a step has done so far into a percentage: fixed points for its phases and,
//! while sfp builds, the share of packages built.

/// Progress through a step's commands.
#[derive(Debug, Clone)]
pub struct Tracker {
    commands: usize,
    current: usize,
    packages: usize,
    built: usize,
}

/// Percent reached once the source is ready; the commands share the range up to `DONE`.
pub const PREPARED: u8 = 15;
const DONE: u8 = 95;

impl Tracker {
    /// `packages`: how many packages the project builds (0 when unknown or not a build).
    pub fn new(commands: usize, packages: usize) -> Self {
        Self { commands: commands.max(1), current: 0, packages, built: 0 }
    }

    pub fn start_command(&mut self, index: usize) {
        self.current = index;
        self.built = 0;
    }

    /// Feeds an output line; returns true when the percentage moved.
    pub fn line(&mut self, line: &str) -> bool {
        if self.packages > 0 && line.contains(" package created in ") && self.built < self.packages {
            self.built += 1;
            return true;
        }
        false
    }

    pub fn percent(&self) -> u8 {
        let span = f64::from(DONE - PREPARED) / self.commands as f64;
        let within = if self.packages > 0 { self.built as f64 / self.packages as f64 } else { 0.0 };
        let p = f64::from(PREPARED) + span * (self.current as f64 + within.min(1.0));
        p.round().clamp(0.0, f64::from(DONE)) as u8
    }
}

/// How many packages an `sfdx-project.json` declares.
pub fn package_count(project: &serde_json::Value) -> usize {
    project
        .get("packageDirectories")
        .and_then(|d| d.as_array())
        .map_or(0, |dirs| dirs.iter().filter(|d| d.get("package").is_some()).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_advance_with_each_package() {
        let mut t = Tracker::new(2, 4);
        t.start_command(0);
        assert_eq!(t.percent(), PREPARED);
        assert!(t.line("core package created in 00:00:00.002"));
        assert!(!t.line("Package creation initiated for core"));
        assert_eq!(t.percent(), 25);
        t.start_command(1);
        assert_eq!(t.percent(), 55);
        let project = serde_json::json!({"packageDirectories": [{"path": "a", "package": "a"}, {"path": "b"}]});
        assert_eq!(package_count(&project), 1);
    }
}
