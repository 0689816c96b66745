//! `docs/configuration.md`, generated from the settings' own definitions (the clap structs
//! of the gateway functions and the worker), so the reference cannot drift from the code:
//! `tools/tests/configuration.rs` fails while the committed page is stale, and
//! `make config-docs` rewrites it.

use clap::{Arg, Command, CommandFactory};
use inferencehub_functions::config::{HealthConfig, ModelsConfig, PredictConfig};
use inferencehub_worker::config::Cli;

/// The page.
pub fn configuration_md() -> String {
    let functions = [
        ("predict", PredictConfig::command()),
        ("models", ModelsConfig::command()),
        ("health", HealthConfig::command()),
    ];
    let worker = Cli::command();
    let serve = subcommand(&worker, "serve");
    let mut out = String::from(
        "# Configuration\n\n\
         Generated from the settings' definitions (`functions/src/config.rs`,\n\
         `gpu-worker/src/config.rs`, `proto/src/settings.rs`) by `make config-docs`; a test\n\
         fails while this page is stale. Every setting is read once at start and checked\n\
         there: a bad value stops the process with a message naming it.\n\n\
         - The gateway's settings start with `IHUB_GATEWAY_`, the worker's with `IHUB_WORKER_`.\n\
         - A duration is a whole number with its unit: `250ms`, `5s`, `10m`, `1h` (`0` alone is\n\
         \x20 zero). A bare number is refused.\n\
         - A PEM value is a file path or the PEM text itself (Secrets Manager and ECS inject the\n\
         \x20 text; `\\n` escapes stand for line breaks).\n\
         - Logging: `RUST_LOG` (default `info`) on both sides.\n\
         - Renamed settings are listed in `CHANGELOG.md`.\n\n",
    );
    out += "## The gateway (Lambda functions)\n\n";
    out += "Environment variables only (a Lambda function has no command line); the local\n";
    out += "server `inferencehub-dev gateway` reads the same ones.\n\n";
    out += "| variable | default | read by | meaning |\n|---|---|---|---|\n";
    let mut seen = Vec::new();
    for (_, command) in &functions {
        for arg in command.get_arguments() {
            let Some(env) = env_of(arg) else {
                continue;
            };
            if seen.contains(&env) {
                continue;
            }
            seen.push(env.clone());
            let readers: Vec<&str> = functions
                .iter()
                .filter(|(_, c)| c.get_arguments().any(|a| env_of(a).as_ref() == Some(&env)))
                .map(|(name, _)| *name)
                .collect();
            out += &format!(
                "| `{env}` | {} | {} | {} |\n",
                default_of(arg),
                readers.join(", "),
                help_of(arg)
            );
        }
    }
    out += "\nThe AWS SDK's own variables apply too: `AWS_REGION`, the credentials,\n";
    out +=
        "`AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL_SECRETS_MANAGER` (a local stack), and\n";
    out +=
        "`AWS_CA_BUNDLE`: a PEM file of CA certificates the functions trust for those endpoints\n";
    out +=
        "besides Mozilla's roots, which are compiled in (the machine's CA store is not read; an\n";
    out += "unreadable bundle fails every AWS call with its name).\n";
    out += "\n## The worker (`inferencehub-worker serve`)\n\n";
    out += "| variable | flag | default | meaning |\n|---|---|---|---|\n";
    for arg in serve.get_arguments() {
        out += &flag_row("", arg);
    }
    out += "\n## The worker's operator commands\n\n";
    out += "`inferencehub-worker predict | models | health | probe`: a mutual-TLS client of a\n";
    out += "worker (the container's health check uses `probe`). They read the gateway's\n";
    out += "worker-client variables, so one environment serves both.\n\n";
    out += "| command | variable | flag | default | meaning |\n|---|---|---|---|---|\n";
    for name in ["predict", "models", "health", "probe"] {
        for arg in subcommand(&worker, name).get_arguments() {
            out += &flag_row(&format!("| {name} "), arg);
        }
    }
    out
}

/// A table row for a command-line argument (none for `--help`): `prefix`, the variable, the
/// flag, the default and the meaning.
fn flag_row(prefix: &str, arg: &Arg) -> String {
    let Some(long) = arg.get_long().filter(|_| arg.get_id() != "help") else {
        return String::new();
    };
    format!(
        "{prefix}| {} | `--{long}` | {} | {} |\n",
        env_of(arg).map_or("—".to_string(), |e| format!("`{e}`")),
        default_of(arg),
        help_of(arg)
    )
}

fn subcommand(command: &Command, name: &'static str) -> Command {
    command
        .get_subcommands()
        .find(|c| c.get_name() == name)
        .cloned()
        .unwrap_or_else(|| Command::new(name))
}

fn env_of(arg: &Arg) -> Option<String> {
    arg.get_env().map(|e| e.to_string_lossy().into_owned())
}

fn default_of(arg: &Arg) -> String {
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    match values.as_slice() {
        [] if arg.is_required_set() => "required".into(),
        [] => "—".into(),
        [one] if one.is_empty() => "(empty)".into(),
        values => format!("`{}`", values.join(",")),
    }
}

fn help_of(arg: &Arg) -> String {
    let text = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    if !values.is_empty() && arg.get_num_args().is_none_or(|n| n.takes_values()) {
        if !text.ends_with('.') {
            text.push('.');
        }
        text += &format!(" One of {}.", values.join(", "));
    }
    text.replace('|', "\\|")
}
