//! What development and tests need and production never does: a development CA with
//! mTLS certificates ([`certs`]), development JWT signing keys and tokens ([`keys`]), a
//! local DynamoDB-compatible server and its table ([`dynamo`]), a local Secrets Manager
//! ([`secrets`]), a fault-injecting TCP proxy ([`proxy`]), and an in-process HTTP
//! server in front of the Lambda handlers ([`http`]); [`largest_error`], for the checks
//! that compare an engine's numbers with a reference's; and [`demo_sentences`], the demo
//! text.
//!
//! It depends on neither serving crate, so their own tests can use it without compiling
//! the other half (the functions' tests build no candle).

pub mod certs;
pub mod dynamo;
pub mod http;
pub mod keys;
pub mod proxy;
pub mod secrets;
pub mod tls_front;

/// The largest of `errors`, a NaN counting as infinite: `f32::max` skips a NaN, so a model
/// answering NaN would pass a check folded with it.
pub fn largest_error(errors: impl IntoIterator<Item = f32>) -> f32 {
    errors
        .into_iter()
        .map(|e| if e.is_nan() { f32::INFINITY } else { e })
        .fold(0.0, f32::max)
}

/// The demo `sentiment` model's sentences (`tools/data/sentiment.tsv`, labels left off), in
/// the file's order: what the benchmarks and the tokenizer's tests feed text models.
pub fn demo_sentences() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sentiment.tsv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t').map(|(_, s)| s.to_string()))
        .collect()
}

/// A free loopback TCP port (bound, then released for a server to take).
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something listens on loopback `port`, at most `within`.
pub(crate) async fn wait_listening(
    port: u16,
    within: std::time::Duration,
    what: &str,
) -> anyhow::Result<()> {
    let ready = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    };
    tokio::time::timeout(within, ready)
        .await
        .map_err(|_| anyhow::anyhow!("{what} did not listen within {} s", within.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::largest_error;

    #[test]
    fn the_largest_error_is_the_largest_and_a_nan_is_infinite() {
        assert_eq!(largest_error([0.5, 2.0, 1.0]), 2.0);
        assert_eq!(largest_error([]), 0.0);
        assert_eq!(largest_error([0.5, f32::NAN, 1.0]), f32::INFINITY);
    }
}
