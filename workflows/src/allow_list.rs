//! The sfp commands the `sfp` task type may run. Commands that run scripts, install
//! plugins, log orgs in or write outside the step's working folder are not on the list.

/// Command prefixes that may start `data.args`.
pub const ALLOWED: &[&[&str]] = &[
    &["--version"],
    &["--help"],
    &["version"],
    &["commands"],
    &["help"],
    &["build"],
    &["quickbuild"],
    &["impact", "package"],
    &["impact", "releaseconfig"],
    &["artifacts", "query"],
    &["releasedefinition", "generate"],
    &["changelog", "generate"],
    &["dependency", "expand"],
    &["dependency", "shrink"],
    &["validate", "org"],
    &["install"],
    &["apextests", "trigger"],
    &["pool", "list"],
    &["pool", "metrics", "publish"],
    &["profile", "retrieve"],
];

const MAX_ARGS: usize = 64;
const MAX_ARG_LEN: usize = 1000;

/// Checks an argv for the `sfp` task type: an allowed command, then plain arguments whose
/// paths stay inside the working folder.
pub fn check(args: &[String]) -> Result<(), String> {
    if args.is_empty() {
        return Err("names an sfp command, e.g. [\"--version\"]".into());
    }
    if args.len() > MAX_ARGS {
        return Err(format!("at most {MAX_ARGS} arguments"));
    }
    let allowed =
        ALLOWED.iter().any(|prefix| args.len() >= prefix.len() && args.iter().zip(prefix.iter()).all(|(a, p)| a == p));
    if !allowed {
        let list: Vec<String> = ALLOWED.iter().map(|p| p.join(" ")).collect();
        return Err(format!("`{}` is not an allowed sfp command; allowed: {}", args.join(" "), list.join(", ")));
    }
    for (i, arg) in args.iter().enumerate() {
        if arg.len() > MAX_ARG_LEN || arg.chars().any(char::is_control) {
            return Err(format!("argument {i} is longer than {MAX_ARG_LEN} characters or has control characters"));
        }
        let value = arg.split_once('=').map_or(arg.as_str(), |(_, v)| v);
        if value.starts_with('/') || value.starts_with('~') || value.split('/').any(|part| part == "..") {
            return Err(format!("argument {i} ({arg:?}) points outside the working folder"));
        }
        if matches!(arg.as_str(), "-f" | "--scriptpath") && args[0] != "build" && args[0] != "quickbuild" {
            return Err(format!("argument {i}: scripts cannot be run this way"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn allows_listed_commands_with_plain_arguments() {
        assert!(check(&argv("--version")).is_ok());
        assert!(check(&argv("impact package --basebranch main")).is_ok());
        assert!(check(&argv("artifacts query -o qa --json")).is_ok());
    }

    #[test]
    fn refuses_the_rest() {
        assert!(check(&[]).is_err());
        assert!(check(&argv("plugins install x")).is_err());
        assert!(check(&argv("org login url -u x")).is_err());
        assert!(check(&argv("publish -d a -f s.sh")).is_err());
        assert!(check(&argv("impact")).is_err(), "a bare group is not a command");
        assert!(check(&argv("build --artifactdir /etc")).is_err());
        assert!(check(&argv("build --artifactdir=../../x")).is_err());
        assert!(check(&argv("build --artifactdir ~/x")).is_err());
        assert!(check(&["--version".to_string(), "a\0b".to_string()]).is_err());
        let many = vec!["--version".to_string(); 65];
        assert!(check(&many).is_err());
    }
}
