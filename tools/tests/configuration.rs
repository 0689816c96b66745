//! `docs/configuration.md` is the one generated from the settings' definitions.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use inferencehub_tools::reference::configuration_md;

/// `IHUB_WRITE_CONFIG_DOCS=1` (what `make config-docs` sets) rewrites the committed page.
#[test]
fn the_committed_configuration_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let generated = configuration_md();
    if std::env::var_os("IHUB_WRITE_CONFIG_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/configuration.md is stale: run `make config-docs` and commit it"
    );
}

/// Every setting of both sides appears, with its default, and nothing else does.
#[test]
fn the_reference_lists_every_setting_with_its_default() {
    let page = configuration_md();
    for (variable, default) in [
        ("IHUB_GATEWAY_WORKER_TIMEOUT", "`5s`"),
        ("IHUB_GATEWAY_RATE_LIMIT_WINDOW", "`60s`"),
        ("IHUB_GATEWAY_MAX_PROMPT_BYTES", "`16384`"),
        ("IHUB_WORKER_MAX_WAIT", "`0`"),
        ("IHUB_WORKER_DRAIN_TIMEOUT", "`30s`"),
        ("IHUB_WORKER_MAX_PROMPT_BYTES", "`16384`"),
    ] {
        let line = page
            .lines()
            .find(|l| l.contains(&format!("`{variable}`")))
            .unwrap_or_else(|| panic!("{variable} missing"));
        assert!(line.contains(default), "{line}");
    }
    assert!(
        !page.contains("_MS`") && !page.contains("_SECS`"),
        "one duration style"
    );
    // Each variable is listed once per table it belongs to.
    let gateway = page.split("## The worker").next().unwrap();
    let count = gateway.matches("`IHUB_GATEWAY_JWT_ISSUER`").count();
    assert_eq!(count, 1);
}
