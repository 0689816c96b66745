//! Configuration conventions both sides share: settings are typed clap structs read once
//! at start (flags and environment variables), PEM material is given the same way
//! everywhere (a file path or the PEM text itself), and renamed environment variables keep
//! working for one release with a warning.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Parser};

/// Largest prompt, in bytes, both the gateway and the worker accept unless configured
/// otherwise (`IHUB_MAX_PROMPT_BYTES` on either side).
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 16 * 1024;

/// How a client proves itself to the workers and checks them: the same variables for the
/// gateway functions and the worker's own CLI client. Each PEM value is a path or the
/// PEM text itself.
#[derive(Clone, Args)]
pub struct WorkerClientTls {
    /// CA that signed the worker certificates (path or PEM text).
    #[arg(
        long = "tls-ca",
        env = "IHUB_WORKER_CLIENT_TLS_CA",
        hide_env_values = true
    )]
    pub ca: Option<PathBuf>,
    /// Client certificate (path or PEM text).
    #[arg(
        long = "tls-cert",
        env = "IHUB_WORKER_CLIENT_TLS_CERT",
        hide_env_values = true
    )]
    pub cert: Option<PathBuf>,
    /// Client private key (path or PEM text). Never logged.
    #[arg(
        long = "tls-key",
        env = "IHUB_WORKER_CLIENT_TLS_KEY",
        hide_env_values = true
    )]
    pub key: Option<PathBuf>,
    /// Name the worker certificates must be valid for.
    #[arg(
        long = "tls-server-name",
        env = "IHUB_WORKER_TLS_SERVER_NAME",
        default_value = "localhost"
    )]
    pub server_name: String,
}

impl std::fmt::Debug for WorkerClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The PEM texts of a [`WorkerClientTls`].
pub struct ClientPems {
    /// CA certificate(s).
    pub ca: Vec<u8>,
    /// Client certificate chain.
    pub cert: Vec<u8>,
    /// Client private key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ClientPems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Sizes only: the key is never printed.
        f.debug_struct("ClientPems")
            .field("ca_bytes", &self.ca.len())
            .field("cert_bytes", &self.cert.len())
            .field("key_bytes", &self.key.len())
            .finish()
    }
}

impl WorkerClientTls {
    /// Settings from PEM files (tests, tools).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Self {
        Self {
            ca: Some(ca.into()),
            cert: Some(cert.into()),
            key: Some(key.into()),
            server_name: "localhost".into(),
        }
    }

    /// Whether any of the three PEM values is set.
    pub fn any_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Reads the three PEM values; a missing one is named by its variable.
    pub fn read(&self) -> Result<ClientPems, String> {
        let one = |value: &Option<PathBuf>, var: &str| match value {
            Some(value) => read_pem(value),
            None => Err(format!("{var} is not set (a path or the PEM text)")),
        };
        Ok(ClientPems {
            ca: one(&self.ca, "IHUB_WORKER_CLIENT_TLS_CA")?,
            cert: one(&self.cert, "IHUB_WORKER_CLIENT_TLS_CERT")?,
            key: one(&self.key, "IHUB_WORKER_CLIENT_TLS_KEY")?,
        })
    }
}

/// Parses `T` from `args` and the environment, honouring `renamed` variables (looked up
/// through `env`). Returns the settings and the deprecation warnings to log.
pub fn parse<T: Parser>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    renamed: &[Renamed],
    env: impl Fn(&str) -> Option<String>,
) -> Result<(T, Vec<String>), clap::Error> {
    let command = T::command().color(clap::ColorChoice::Never);
    let (command, warnings) = apply_renamed(command, renamed, env);
    let matches = command.try_get_matches_from(args)?;
    Ok((T::from_arg_matches(&matches)?, warnings))
}

/// A PEM value given as a file path, or as the PEM text itself (how ECS and Lambda inject
/// secrets). Inline text may carry `\n` escapes instead of line breaks.
pub fn read_pem(value: &Path) -> Result<Vec<u8>, String> {
    let text = value.to_string_lossy();
    if text.trim_start().starts_with("-----BEGIN") {
        return Ok(text.replace("\\n", "\n").into_bytes());
    }
    std::fs::read(value).map_err(|e| format!("reading {}: {e}", value.display()))
}

/// An environment variable renamed in this release. The old name still sets the argument
/// `arg` (a clap argument id) when the new one is unset, and logs a deprecation warning.
#[derive(Debug, Clone, Copy)]
pub struct Renamed {
    /// The name that still works, for one release.
    pub old: &'static str,
    /// The name to use now.
    pub new: &'static str,
    /// Id of the clap argument the variable sets (the field name).
    pub arg: &'static str,
}

/// Applies `renamed` to `command` and every subcommand below it: where only an old
/// variable is set, its value becomes the argument's default, so a flag or the new
/// variable still win over it. Returns the warnings to log once logging is up.
pub fn apply_renamed(
    mut command: clap::Command,
    renamed: &[Renamed],
    env: impl Fn(&str) -> Option<String>,
) -> (clap::Command, Vec<String>) {
    let mut warnings = Vec::new();
    for r in renamed {
        let (Some(value), None) = (env(r.old), env(r.new)) else {
            continue;
        };
        warnings.push(format!(
            "{} is deprecated and will stop working in the next release: use {}",
            r.old, r.new
        ));
        // Read once per process at start, so leaking the few bytes is fine.
        let value: &'static str = Box::leak(value.into_boxed_str());
        command = set_default(command, r.arg, value);
    }
    (command, warnings)
}

fn set_default(command: clap::Command, arg: &'static str, value: &'static str) -> clap::Command {
    command
        .mut_args(|a| {
            if a.get_id() == arg {
                // Secrets must not show up in --help.
                a.default_value(value)
                    .hide_default_value(true)
                    .required(false)
            } else {
                a
            }
        })
        .mut_subcommands(|s| set_default(s, arg, value))
}

/// The process environment, with blank values treated as unset.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn command() -> Command {
        Command::new("t")
            .arg(
                Arg::new("cap")
                    .long("cap")
                    .env("NEW_CAP")
                    .default_value("1"),
            )
            .subcommand(Command::new("serve").arg(Arg::new("cap2").long("cap2")))
    }

    const RENAMED: &[Renamed] = &[Renamed {
        old: "OLD_CAP",
        new: "NEW_CAP",
        arg: "cap",
    }];

    #[test]
    fn an_old_name_still_sets_the_value_with_a_warning() {
        let env = |k: &str| (k == "OLD_CAP").then(|| "7".to_string());
        let (cmd, warnings) = apply_renamed(command(), RENAMED, env);
        let m = cmd.try_get_matches_from(["t"]).unwrap();
        assert_eq!(m.get_one::<String>("cap").unwrap(), "7");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("use NEW_CAP"), "{warnings:?}");
        // A flag still wins over the old variable.
        let (cmd, _) = apply_renamed(command(), RENAMED, env);
        let m = cmd.try_get_matches_from(["t", "--cap", "9"]).unwrap();
        assert_eq!(m.get_one::<String>("cap").unwrap(), "9");
    }

    #[test]
    fn the_new_name_wins_and_nothing_is_said() {
        let env = |k: &str| Some(if k == "OLD_CAP" { "7" } else { "8" }.to_string());
        let (_, warnings) = apply_renamed(command(), RENAMED, env);
        assert!(warnings.is_empty());
    }

    #[test]
    fn pem_values_are_paths_or_text() {
        let inline = read_pem(Path::new("-----BEGIN X-----\\nAAAA\\n-----END X-----")).unwrap();
        assert_eq!(inline, b"-----BEGIN X-----\nAAAA\n-----END X-----");
        let err = read_pem(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
