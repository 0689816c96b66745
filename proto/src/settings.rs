//! Configuration conventions both sides share. Settings are typed clap structs read once at
//! start from flags and environment variables: the worker's under `IHUB_WORKER_`, the
//! gateway's under `IHUB_GATEWAY_`. Each default is written once, in its `#[arg]`; every
//! duration is a number with a unit ([`duration`]: `250ms`, `5s`, `10m`, `1h`); PEM
//! material is a file path or the PEM text itself ([`read_pem`]). The reference page
//! (`docs/configuration.md`) is generated from these definitions.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};

/// Largest prompt, in bytes, both the gateway and the worker accept unless configured
/// otherwise.
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 16 * 1024;

/// Deadline of one call to a worker, for the gateway and the worker's own CLI client.
pub const DEFAULT_WORKER_TIMEOUT: &str = "5s";

/// Parses a duration: a whole number with a unit, `ms`, `s`, `m` or `h` (`250ms`, `5s`,
/// `10m`, `1h`); `0` alone is zero. A bare number is refused: its unit would be a guess.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write it as 250ms, 5s, 10m or 1h"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number with a unit (250ms, 5s, 10m, 1h)"))?;
    let seconds = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        other => Err(format!(
            "{text:?}: unknown unit {other:?}; use ms, s, m or h"
        )),
    }
}

/// A duration as [`duration`] reads it back, in the largest whole unit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// How a client proves itself to the workers and checks them: the gateway's variables,
/// which the worker's own CLI client (`predict`, `models`, `health`) and the load
/// generator read too, so one environment serves them all. Each PEM value is a path or
/// the PEM text itself.
#[derive(Clone, Args)]
pub struct WorkerClientTls {
    /// CA that signed the worker certificates (path or PEM text).
    #[arg(
        long = "tls-ca",
        env = "IHUB_GATEWAY_WORKER_TLS_CA",
        hide_env_values = true
    )]
    pub ca: Option<PathBuf>,
    /// Client certificate (path or PEM text).
    #[arg(
        long = "tls-cert",
        env = "IHUB_GATEWAY_WORKER_TLS_CERT",
        hide_env_values = true
    )]
    pub cert: Option<PathBuf>,
    /// Client private key (path or PEM text). Never logged.
    #[arg(
        long = "tls-key",
        env = "IHUB_GATEWAY_WORKER_TLS_KEY",
        hide_env_values = true
    )]
    pub key: Option<PathBuf>,
    /// Name the worker certificates must be valid for.
    #[arg(
        long = "tls-server-name",
        env = "IHUB_GATEWAY_WORKER_TLS_SERVER_NAME",
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
            ca: one(&self.ca, "IHUB_GATEWAY_WORKER_TLS_CA")?,
            cert: one(&self.cert, "IHUB_GATEWAY_WORKER_TLS_CERT")?,
            key: one(&self.key, "IHUB_GATEWAY_WORKER_TLS_KEY")?,
        })
    }
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

/// Parses `T` from `args` alone: the environment variables named in `vars` become the
/// flags they stand for, and the process environment is not read. Tests and tools build
/// settings this way, so every default stays the one in the `#[arg]`.
pub fn parse_vars<T: Parser>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    vars: &[(&str, &str)],
) -> Result<T, clap::Error> {
    let mut command = T::command().color(clap::ColorChoice::Never);
    let mut argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
    for (name, value) in vars {
        let Some(long) = find_long(&command, name) else {
            return Err(command.error(
                clap::error::ErrorKind::UnknownArgument,
                format!("no setting reads {name}"),
            ));
        };
        argv.push(format!("--{long}={value}").into());
    }
    // Every other argument's environment variable is ignored: strip them.
    command = without_env(command);
    let matches = command.try_get_matches_from(argv)?;
    T::from_arg_matches(&matches)
}

fn find_long(command: &clap::Command, var: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == var))
        .and_then(|a| a.get_long().map(str::to_string))
        .or_else(|| command.get_subcommands().find_map(|s| find_long(s, var)))
}

fn without_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|a| a.env(None::<&str>))
        .mut_subcommands(without_env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration(" 5s "), Ok(Duration::from_secs(5)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        for bad in [
            "5",
            "",
            "s",
            "5 s",
            "1.5s",
            "-1s",
            "5d",
            "99999999999999999999h",
        ] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
        for d in ["0", "250ms", "1500ms", "5s", "10m", "1h", "90m"] {
            assert_eq!(format_duration(duration(d).unwrap()), d);
        }
    }

    #[test]
    fn pem_values_are_paths_or_text() {
        let inline = read_pem(Path::new("-----BEGIN X-----\\nAAAA\\n-----END X-----")).unwrap();
        assert_eq!(inline, b"-----BEGIN X-----\nAAAA\n-----END X-----");
        let err = read_pem(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[derive(Debug, Parser)]
    struct Example {
        #[arg(long, env = "EXAMPLE_CAP", default_value_t = 3)]
        cap: u32,
        #[arg(long, env = "EXAMPLE_WAIT", default_value = "2s", value_parser = duration)]
        wait: Duration,
    }

    #[test]
    fn settings_parse_from_variables_alone() {
        let e: Example = parse_vars(["t"], &[("EXAMPLE_WAIT", "250ms")]).unwrap();
        assert_eq!((e.cap, e.wait), (3, Duration::from_millis(250)));
        let err = parse_vars::<Example>(["t"], &[("EXAMPLE_NOPE", "1")]).unwrap_err();
        assert!(err.to_string().contains("EXAMPLE_NOPE"), "{err}");
        let err = parse_vars::<Example>(["t"], &[("EXAMPLE_WAIT", "2")]).unwrap_err();
        assert!(err.to_string().contains("no unit"), "{err}");
    }
}
