//! The CLI's HTTP client, for downloads and for asking nodes how they are.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};

/// A client that names the CLI; `timeout` bounds each whole request when given.
pub fn client(timeout: Option<Duration>) -> Result<reqwest::Client> {
    // reqwest is built without a default TLS provider; this one serves https URLs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("cargo-immutant/", env!("CARGO_PKG_VERSION")));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder.build().context("cannot set up an HTTP client")
}

/// Runs `future` to completion on a runtime of its own (the CLI is otherwise synchronous).
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start an async runtime")?;
    Ok(runtime.block_on(future))
}
